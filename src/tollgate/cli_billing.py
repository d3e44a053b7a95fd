"""`tollgate credits top-up`: buy credits with the configured payment provider.

The same path as `POST .../billing/topup` (`tollgate.api.billing`): `TopUps.create_topup` with
the configured payment provider and purchase fee, idempotent on its key (`--idempotency-key`, or
a new one per run), credited exactly once. The amount is in dollars (`--amount 25.50`); the API's
body takes cents. Under the sandbox provider the cards are Stripe's test cards
(`tollgate.billing.payments.sandbox`) and no money moves.

Exit codes: 0 succeeded (or pending at the provider), 1 declined or needing authentication (3-D
Secure, which a CLI cannot give) or the provider did not answer, 2 bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import uuid4

import typer

from tollgate import money, operator
from tollgate.api.admin import dollars, timestamp
from tollgate.billing.payments import (
    PaymentMethodRejected,
    PaymentProvider,
    build_payment_provider,
)
from tollgate.billing.payments.sandbox import SIMULATED
from tollgate.billing.topup import MAX_TOPUP_CENTS, MIN_TOPUP_CENTS, PaymentDeclined, TopUps
from tollgate.cli_common import (
    EXIT_FAILURE,
    ConfigOption,
    JsonOption,
    console,
    fail,
    human_dollars,
    load_settings_or_exit,
    parse_dollars,
    print_json,
    run_with_store,
)
from tollgate.errors import Conflict, InvalidRequest, UpstreamUnavailable
from tollgate.settings import Settings, SettingsError
from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store.payments import TopUpRecord
from tollgate.store.topup_lookup import find_topup_by_key

AccountArg = Annotated[str, typer.Argument(help="The account id (32 lowercase hex characters).")]


# --- credits top-up -------------------------------------------------------------------------------


def _payment_provider(settings: Settings) -> PaymentProvider:
    try:
        return build_payment_provider(settings)
    except SettingsError as exc:
        fail(str(exc).replace("\n", " "))


def _check_key(key: str | None) -> str:
    if key is None:
        return f"cli-{uuid4().hex}"
    if not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
        fail("--idempotency-key must be 1 to 255 printable ASCII characters")
    return key


def _card_details(number: str) -> dict[str, Any]:
    # Stripe's test cards take any future expiry and any CVC.
    return {
        "card_number": number,
        "exp_month": 12,
        "exp_year": datetime.now(UTC).year + 5,
        "cvc": "123",
    }


async def _prepare_payment(
    topups: TopUps, account_id: str, card: str | None, payment_method: str | None
) -> None:
    """Save `--card` as the default, check `--payment-method`, or require a saved method."""
    if card is not None:
        try:
            await topups.save_payment_method(account_id, _card_details(card))
        except PaymentMethodRejected as exc:
            raise InvalidRequest(f"--card: {exc.message}") from None
    elif payment_method is not None:
        provider = topups.provider
        if provider.sandbox and await provider.describe_payment_method(payment_method) is None:
            raise InvalidRequest(
                f"--payment-method: '{payment_method[:80]}' is not a sandbox payment method; "
                "use a Stripe test PaymentMethod such as pm_card_visa, or --card 4242424242424242."
            )
    else:
        profile = await topups.profile(account_id)
        if profile is None or profile.payment_method_id is None:
            how = (
                "add --card 4242424242424242 (a Stripe test card, saved as its payment method) "
                "or --payment-method pm_card_visa"
                if topups.provider.sandbox
                else "add a card in the dashboard, or give --payment-method pm_..."
            )
            raise InvalidRequest(f"account {account_id} has no payment method: {how}.")


async def _charge(
    topups: TopUps, account_id: str, cents: int, key: str, payment_method: str | None
) -> TopUpRecord:
    """`create_topup`; a decline is returned as the failed record, not raised."""
    try:
        return await topups.create_topup(
            account_id, cents, idempotency_key=key, payment_method_id=payment_method
        )
    except PaymentDeclined:
        found = await find_topup_by_key(topups.store, account_id, key)
        assert found is not None  # create_topup claimed the key before it charged
        return found
    except Conflict as exc:
        if exc.code == "topup_in_progress":
            fail(f"{exc.message} (--idempotency-key {key})", EXIT_FAILURE)
        raise InvalidRequest(
            f"--idempotency-key {key} was already used for another top-up (another amount or "
            "payment method); use a new key for a new top-up."
        ) from None
    except UpstreamUnavailable as exc:
        raise UpstreamUnavailable(
            f"the payment provider did not answer ({exc.message}); retrying with "
            f"--idempotency-key {key} is safe: it never charges twice."
        ) from None


def topup_json(
    record: TopUpRecord, account: Account, provider: PaymentProvider, *, replayed: bool
) -> dict[str, Any]:
    """The top-up's outcome (`status`: succeeded, failed, requires_action or pending) and the
    balance after it; `replayed` when the idempotency key had been used before."""
    return {
        "id": record.id,
        "account_id": record.account_id,
        "status": record.status,
        "amount": dollars(money.from_cents(record.amount_cents)),
        "amount_cents": record.amount_cents,
        "fee_cents": record.fee_cents,
        "charged_cents": record.charge_cents,
        "brand": record.brand,
        "last4": record.last4,
        "payment_intent_id": record.payment_intent_id,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "idempotency_key": record.idempotency_key,
        "created_at": timestamp(record.created_at),
        "balance": dollars(account.balance_nanos),
        "balance_nanos": account.balance_nanos,
        "payment_provider": provider.name,
        "sandbox": provider.sandbox,
        "replayed": replayed,
    }


def _print_topup(
    record: TopUpRecord, account: Account, provider: PaymentProvider, *, replayed: bool
) -> None:
    out = console()
    if replayed:
        out.print(
            f"This --idempotency-key was used before (top-up {record.id}): nothing was charged "
            "or credited again. Its outcome:"
        )
    amount = human_dollars(money.from_cents(record.amount_cents))
    card = f" with {record.brand} ending {record.last4}" if record.last4 else ""
    fee = record.fee_cents
    charged = f"; charged {human_dollars(money.from_cents(record.charge_cents))}" if fee else ""
    balance = human_dollars(account.balance_nanos)
    if record.status == "succeeded":
        out.print(f"Top-up succeeded: {amount} added to account {account.id}{card}{charged}.")
    elif record.status == "failed":
        out.print(f"Top-up of {amount} declined{card}: {record.error_message}")
    elif record.status == "requires_action":
        out.print(
            f"Top-up of {amount} requires authentication (3-D Secure){card}, which the CLI "
            "cannot complete; nothing was charged."
        )
    else:
        out.print(f"Top-up of {amount} is pending: it is credited once the payment completes.")
    out.print(f"Balance: {balance}")
    if provider.sandbox:
        out.print(f"({SIMULATED})")


def credits_topup(
    account_id: AccountArg,
    amount: Annotated[
        str,
        typer.Option(
            "--amount",
            help=f"Dollars to add, {human_dollars(money.from_cents(MIN_TOPUP_CENTS))} to "
            f"{human_dollars(money.from_cents(MAX_TOPUP_CENTS))} (e.g. 25 or 25.50).",
            show_default=False,
        ),
    ],
    card: Annotated[
        str | None,
        typer.Option(
            "--card",
            help="A card number to save as the account's payment method, then charge. The "
            "sandbox takes Stripe's test cards: 4242424242424242 succeeds, 4000000000000002 is "
            "declined, 4000000000009995 has insufficient funds, 4000002760003184 needs 3-D Secure.",
            show_default=False,
        ),
    ] = None,
    payment_method: Annotated[
        str | None,
        typer.Option(
            "--payment-method",
            help="Charge this payment method id (e.g. pm_card_visa) instead of the saved one.",
            show_default=False,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Repeat a top-up safely: the same key never charges or credits twice "
            "(default: a new key each time).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Buy credits: charge the account's payment method through the payment provider.

    Without --card or --payment-method the account's saved payment method is charged. Exit 0
    when the top-up succeeded (or is pending at the provider), 1 when the card was declined or
    needs authentication the CLI cannot give.
    """
    cents = parse_dollars(
        amount, "--amount", minimum_cents=MIN_TOPUP_CENTS, maximum_cents=MAX_TOPUP_CENTS
    )
    if card is not None and payment_method is not None:
        fail("give --card or --payment-method, not both")
    key = _check_key(idempotency_key)
    settings = load_settings_or_exit(config)
    provider = _payment_provider(settings)

    async def act(store: Store) -> tuple[TopUpRecord, Account, bool]:
        await operator.require_account(store, account_id)
        topups = TopUps(store, provider, fee_percent=settings.billing.purchase_fee_percent)
        try:
            earlier = await find_topup_by_key(store, account_id, key)
            replayed = earlier is not None and earlier.status != "creating"
            if not replayed:
                await _prepare_payment(topups, account_id, card, payment_method)
            record = await _charge(topups, account_id, cents, key, payment_method)
        finally:
            await topups.aclose()
        account = await account_repo.get_account(store, account_id)
        assert account is not None
        return record, account, replayed

    record, account, replayed = run_with_store(settings, act)
    if as_json:
        print_json(topup_json(record, account, provider, replayed=replayed))
    else:
        _print_topup(record, account, provider, replayed=replayed)
    if record.status == "failed":
        fail(
            f"the payment was declined ({record.error_code}); use another card (--card) or "
            "try again later",
            EXIT_FAILURE,
        )
    if record.status == "requires_action":
        fail(
            "the card needs 3-D Secure authentication, which the CLI cannot complete; use "
            "another card (--card), or top up in the dashboard",
            EXIT_FAILURE,
        )
