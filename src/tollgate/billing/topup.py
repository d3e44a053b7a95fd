"""Top-ups: manual and automatic, each credited exactly once.

    topups = TopUps(store, build_payment_provider(settings),
                    fee_percent=settings.billing.purchase_fee_percent)
    record = await topups.create_topup(account_id, 2500, idempotency_key=key)   # a manual top-up
    topups.schedule_auto_topup(account_id, balance_after_nanos)   # the pipeline, after each settle
    await topups.handle_webhook(raw_body, stripe_signature_header)          # the Stripe webhook

**Exactly once.** A top-up is a `topups` row claimed by its idempotency key, then one charge at the
payment provider keyed by the row id (`tollgate-topup-{id}`, so a retry can never charge twice),
then one ledger credit whose reference is the payment intent id. The ledger's unique
`(account, reference)` makes the credit happen at most once whoever applies it: the request that
charged, a status poll, a webhook (however often and in whatever order it is delivered), or a
resumed auto top-up. The amount credited is always the row's `amount_cents`, never a figure from the
provider; the card is charged `amount + fee` (`charge_cents`), and a charge of any other amount is
not credited.

**Manual top-up** (`create_topup`): the client may send an `Idempotency-Key`; replaying it returns
the same top-up and outcome (a decline included) and never credits twice. The same key with another
amount is a 409. A replay that finds the first attempt still running is a 409 to retry, unless that
attempt is older than `resume_after` (its process died): then it resumes with the same provider key.

**Auto top-up**: `tollgate.billing.payments.auto` (`maybe_auto_topup`, `schedule_auto_topup`).

**Webhooks** (`handle_webhook`): verified by the provider, deduplicated on the event id (recorded
only after the event was applied, so a failed attempt is retried by the next delivery) and on the
payment intent id (the ledger reference). Events are applied by state, not by arrival order: a late
`payment_failed` never undoes a `succeeded`.

**Fee.** `charge = amount + round_half_up(amount * fee_percent / 100)` in cents, exact
(`tollgate.money.round_half_up` on a Fraction): the one rounding rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tollgate import money
from tollgate.billing.payments import (
    Charge,
    PaymentMethodRejected,
    PaymentProvider,
    PaymentProviderError,
)
from tollgate.billing.payments.auto import AutoTopUpOutcome, AutoTopUps
from tollgate.billing.payments.sandbox import SIMULATED
from tollgate.errors import Conflict, GatewayError, InvalidRequest, NotFound, UpstreamUnavailable
from tollgate.store import Store
from tollgate.store import ledger as ledger_repo
from tollgate.store import payments as repo
from tollgate.store._util import new_id
from tollgate.store.payments import AutoTopUpConfig, PaymentProfile, TopUpRecord

log = logging.getLogger("tollgate.billing.topup")

MIN_TOPUP_CENTS = 1000
MAX_TOPUP_CENTS = 1_000_000  # $10,000 per top-up
MIN_AUTO_THRESHOLD_CENTS = 500
MIN_AUTO_AMOUNT_CENTS = 1000
_WEBHOOK_TYPES = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.requires_action",
        "payment_intent.canceled",
    }
)


class PaymentDeclined(GatewayError):
    """The card was declined (or needs authentication that cannot happen off-session)."""

    status = 402
    default_code = "card_declined"


def fee_cents(amount_cents: int, fee_percent: Decimal) -> int:
    """The purchase fee on `amount_cents`, in whole cents, by the one rounding rule."""
    return money.round_half_up(Fraction(amount_cents) * Fraction(fee_percent) / 100)


class TopUps:
    """Top-up orchestration for one payment provider. Safe to share across tasks."""

    def __init__(
        self,
        store: Store,
        provider: PaymentProvider,
        *,
        fee_percent: Decimal = Decimal(0),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_backoff: timedelta = timedelta(minutes=1),
        stale_after: timedelta = timedelta(minutes=10),
        resume_after: timedelta = timedelta(seconds=30),
        config_ttl: float = 2.0,
    ) -> None:
        self.store = store
        self.provider = provider
        self.fee_percent = fee_percent
        self.clock = clock
        self.resume_after = resume_after
        self.auto = AutoTopUps(
            self, retry_backoff=retry_backoff, stale_after=stale_after, config_ttl=config_ttl
        )

    def fee(self, amount_cents: int) -> int:
        return fee_cents(amount_cents, self.fee_percent)

    # --- payment method -------------------------------------------------------------------------

    async def profile(self, account_id: str) -> PaymentProfile | None:
        """The account's payment profile with this provider (one made with another provider,
        before the operator switched, does not count)."""
        found = await repo.get_profile(self.store, account_id)
        return found if found is not None and found.provider == self.provider.name else None

    async def save_payment_method(
        self, account_id: str, details: Mapping[str, Any]
    ) -> PaymentProfile:
        """Attach a payment method and make it the default (raises `PaymentMethodRejected`)."""
        before = await self.profile(account_id)
        try:
            customer = await self.provider.ensure_customer(
                account_id, before.customer_id if before else None
            )
            card = await self.provider.save_payment_method(account_id, customer, details)
        except PaymentProviderError as exc:
            raise UpstreamUnavailable(exc.message, code=exc.code) from None
        saved = await repo.save_profile(
            self.store,
            account_id,
            provider=self.provider.name,
            customer_id=customer,
            now=self.clock(),
            card={
                "payment_method_id": card.payment_method_id,
                "brand": card.brand,
                "last4": card.last4,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
            },
        )
        old = before.payment_method_id if before else None
        if old and old != card.payment_method_id:
            await self._detach(customer, old)
        return saved

    async def remove_payment_method(self, account_id: str) -> bool:
        """Forget the default payment method; False when there was none."""
        before = await self.profile(account_id)
        if before is None or before.payment_method_id is None:
            return False
        await repo.clear_payment_method(self.store, account_id, self.clock())
        if before.customer_id:
            await self._detach(before.customer_id, before.payment_method_id)
        return True

    async def _detach(self, customer_id: str, payment_method_id: str) -> None:
        try:
            await self.provider.remove_payment_method(customer_id, payment_method_id)
        except PaymentProviderError as exc:  # tollgate no longer uses it either way
            log.warning("could not detach payment method %s: %s", payment_method_id, exc)

    # --- manual top-up --------------------------------------------------------------------------

    async def create_topup(
        self,
        account_id: str,
        amount_cents: int,
        *,
        idempotency_key: str | None = None,
        payment_method_id: str | None = None,
    ) -> TopUpRecord:
        """Charge and credit a manual top-up (the amount is validated by the caller). Raises
        `PaymentDeclined` (402) for a decline, `Conflict` (409) for a reused key,
        `UpstreamUnavailable` (502) when the provider fails (retrying the same key is safe)."""
        profile = await self.profile(account_id)
        method = payment_method_id or (profile.payment_method_id if profile else None)
        if method is None and self.provider.sandbox:
            raise InvalidRequest(
                "This account has no payment method. Add a test card first with POST "
                '.../ai-gateway/billing/payment-method, e.g. {"card_number": '
                '"4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}.',
                code="payment_method_required",
                param="payment_method_id",
            )
        default = profile is not None and method == profile.payment_method_id
        fee = self.fee(amount_cents)
        record, created = await repo.claim_topup(
            self.store,
            now=self.clock(),
            id=new_id(),
            account_id=account_id,
            kind="manual",
            provider=self.provider.name,
            idempotency_key=idempotency_key or f"unkeyed-{new_id()}",
            amount_cents=amount_cents,
            fee_cents=fee,
            charge_cents=amount_cents + fee,
            payment_method_id=method,
            brand=profile.brand if profile and default else None,
            last4=profile.last4 if profile and default else None,
        )
        if not created:
            self._check_replay(record, amount_cents, payment_method_id)
            if record.status != "creating":
                return _raise_if_failed(record)
        customer = profile.customer_id if profile else None
        if customer is None:
            customer = await self._new_customer(account_id)
        try:
            charged = await self.charge(record, customer, off_session=False)
        except PaymentProviderError as exc:
            raise UpstreamUnavailable(exc.message, code=exc.code) from None
        return _raise_if_failed(charged)

    def _check_replay(self, record: TopUpRecord, amount_cents: int, method: str | None) -> None:
        if record.amount_cents != amount_cents or method not in (None, record.payment_method_id):
            raise Conflict(
                f"This Idempotency-Key was already used for a top-up of {record.amount_cents} "
                "cents (or with another payment method). Use a new key for a new top-up.",
                code="idempotency_key_reused",
            )
        if record.status == "creating" and self.clock() - record.modified_at < self.resume_after:
            raise Conflict(
                "A top-up with this Idempotency-Key is still being processed. Retry in a few "
                "seconds with the same key.",
                code="topup_in_progress",
            )

    async def _new_customer(self, account_id: str) -> str:
        try:
            customer = await self.provider.ensure_customer(account_id, None)
        except PaymentProviderError as exc:
            raise UpstreamUnavailable(exc.message, code=exc.code) from None
        await repo.save_profile(
            self.store,
            account_id,
            provider=self.provider.name,
            customer_id=customer,
            now=self.clock(),
        )
        return customer

    async def charge(
        self, record: TopUpRecord, customer: str | None, *, off_session: bool
    ) -> TopUpRecord:
        """Charge a claimed top-up (key `tollgate-topup-{id}`) and settle it. A provider failure
        raises `PaymentProviderError` and leaves the row `creating`, to be resumed."""
        amount = money.format_dollars(money.from_cents(record.amount_cents))
        what = "auto top-up" if record.kind == "auto" else "top-up"
        try:
            charge = await self.provider.charge(
                account_id=record.account_id,
                customer_id=customer,
                payment_method_id=record.payment_method_id,
                amount_cents=record.charge_cents,
                idempotency_key=f"tollgate-topup-{record.id}",
                off_session=off_session,
                description=f"tollgate credits: {what} of {amount}",
                metadata={
                    "tollgate_account_id": record.account_id,
                    "tollgate_topup_id": record.id,
                    "tollgate_kind": record.kind,
                    "tollgate_credit_cents": str(record.amount_cents),
                },
            )
        except PaymentMethodRejected as exc:
            charge = Charge(
                None, "failed", record.charge_cents, error_code=exc.code, error_message=exc.message
            )
        return await self.settle(record, charge)

    # --- settling a charge (request, status poll, webhook, resumed auto top-up) -----------------

    async def settle(self, record: TopUpRecord, charge: Charge) -> TopUpRecord:
        """Apply a charge's state to its top-up; credit it, exactly once, when it succeeded."""
        now = self.clock()
        if charge.status == "succeeded":
            if charge.id is None or charge.amount_cents != record.charge_cents:
                log.error(
                    "payment %s charged %s cents; top-up %s expects %s: not credited",
                    charge.id,
                    charge.amount_cents,
                    record.id,
                    record.charge_cents,
                )
                return record
            entry, _ = await ledger_repo.append_entry(
                self.store,
                record.account_id,
                kind="auto_topup" if record.kind == "auto" else "topup",
                amount_nanos=money.from_cents(record.amount_cents),
                note=self._note(record),
                reference=charge.id,
            )
            updated = await repo.record_charge(
                self.store,
                record.id,
                status="succeeded",
                now=now,
                payment_intent_id=charge.id,
                ledger_entry_id=entry.id,
            )
        elif charge.status == "failed" or (record.kind == "auto" and charge.status != "processing"):
            code = charge.error_code or (
                "card_declined" if charge.status == "failed" else "authentication_required"
            )
            updated = await repo.record_charge(
                self.store,
                record.id,
                status="failed",
                now=now,
                payment_intent_id=charge.id,
                error_code=code,
                error_message=charge.error_message or code,
            )
        else:
            updated = await repo.record_charge(
                self.store,
                record.id,
                status="requires_action" if charge.status == "requires_action" else "pending",
                now=now,
                payment_intent_id=charge.id,
                client_secret=charge.client_secret,
            )
        result = updated or record
        await self.auto.finish(result)
        if result.status == "succeeded" and result.payment_method_id is None:
            await self._adopt_card(result.account_id, charge.payment_method_id)
        return result

    async def _adopt_card(self, account_id: str, payment_method_id: str | None) -> None:
        """After an onboarding top-up paid with a card entered in Stripe.js (saved for off-session
        use by `setup_future_usage`), make that card the default when there is none."""
        profile = await self.profile(account_id)
        if payment_method_id is None or profile is None or profile.payment_method_id:
            return
        try:
            card = await self.provider.describe_payment_method(payment_method_id)
        except PaymentProviderError as exc:
            log.warning("could not read payment method %s: %s", payment_method_id, exc)
            return
        if card is not None:
            fields = ("payment_method_id", "brand", "last4", "exp_month", "exp_year")
            await repo.save_profile(
                self.store,
                account_id,
                provider=self.provider.name,
                customer_id=profile.customer_id,
                now=self.clock(),
                card={name: getattr(card, name) for name in fields},
            )

    def _note(self, record: TopUpRecord) -> str:
        what = "Auto top-up" if record.kind == "auto" else "Top-up"
        card = f" with {record.brand} ending {record.last4}" if record.last4 else ""
        fee = record.fee_cents
        charged = f"; charged {money.format_dollars(money.from_cents(record.charge_cents))}"
        label = f" [{SIMULATED}]" if self.provider.sandbox else ""
        return f"{what}{card}{charged if fee else ''}{label}"

    async def topup_status(self, account_id: str, payment_intent_id: str) -> TopUpRecord:
        """The top-up a payment intent belongs to, refreshed from the provider while pending."""
        record = await repo.find_topup_by_intent(self.store, payment_intent_id)
        if record is None or record.account_id != account_id:
            raise NotFound(
                f"No top-up with payment_intent_id '{payment_intent_id[:80]}' in this account. "
                "Use the payment_intent_id that POST .../billing/topup returned.",
                code="payment_intent_not_found",
            )
        if record.status in ("pending", "requires_action"):
            try:
                charge = await self.provider.get_charge(payment_intent_id)
            except PaymentProviderError as exc:
                log.warning("status refresh of %s failed: %s", payment_intent_id, exc)
                return record
            if charge is not None:
                record = await self.settle(record, charge)
        return record

    # --- webhooks -------------------------------------------------------------------------------

    async def handle_webhook(self, payload: bytes, signature: str | None) -> str:
        """Apply one verified webhook delivery; returns `processed`, `duplicate` or `ignored`.
        Raises `WebhookRejected` (a 400; nothing applied) when it does not verify."""
        event = self.provider.parse_webhook(payload, signature)
        if await repo.event_processed(self.store, event.id):
            return "duplicate"
        outcome = "ignored"
        charge = event.charge
        if charge is not None and charge.id is not None and event.type in _WEBHOOK_TYPES:
            record = await repo.find_topup_by_intent(self.store, charge.id)
            if record is None:  # the webhook beat our own write of the intent id
                topup_id = charge.metadata.get("tollgate_topup_id", "")
                record = await repo.get_topup(self.store, topup_id) if topup_id else None
                owner = charge.metadata.get("tollgate_account_id")
                if record is not None and (record.account_id != owner or record.payment_intent_id):
                    record = None
            if record is not None:
                await self.settle(record, charge)
                outcome = "processed"
        await repo.record_event(
            self.store,
            event.id,
            type=event.type,
            payment_intent_id=charge.id if charge else None,
            now=self.clock(),
        )
        return outcome

    # --- auto top-up ----------------------------------------------------------------------------

    async def auto_config(self, account_id: str) -> AutoTopUpConfig | None:
        return await repo.get_auto_config(self.store, account_id)

    async def set_auto_config(
        self,
        account_id: str,
        *,
        threshold_cents: int,
        amount_cents: int,
        monthly_cap_cents: int | None = None,
    ) -> AutoTopUpConfig:
        config = await repo.put_auto_config(
            self.store,
            account_id,
            threshold_cents=threshold_cents,
            amount_cents=amount_cents,
            monthly_cap_cents=monthly_cap_cents,
            now=self.clock(),
        )
        self.auto.forget(account_id)
        return config

    async def delete_auto_config(self, account_id: str) -> bool:
        deleted = await repo.delete_auto_config(self.store, account_id)
        self.auto.forget(account_id)
        return deleted

    async def maybe_auto_topup(
        self, account_id: str, balance_after_nanos: int
    ) -> AutoTopUpOutcome | None:
        """Charge the auto top-up once per threshold crossing (`tollgate.billing.payments.auto`).
        Safe to call concurrently from any number of tasks and processes; never raises; None
        when there was nothing to do."""
        return await self.auto.maybe_auto_topup(account_id, balance_after_nanos)

    def schedule_auto_topup(self, account_id: str, balance_after_nanos: int) -> None:
        """For the pipeline, after every settle: `maybe_auto_topup` as a background task, or
        nothing when the cached config shows there is nothing to do. Never blocks, never raises."""
        self.auto.schedule(account_id, balance_after_nanos)

    async def aclose(self) -> None:
        """Wait for scheduled auto top-ups, then close the provider."""
        await self.auto.drain()
        await self.provider.aclose()


def _raise_if_failed(record: TopUpRecord) -> TopUpRecord:
    if record.status == "failed":
        raise PaymentDeclined(
            f"The payment was declined: {record.error_message or record.error_code}. "
            "Use another payment method, or try again later.",
            code=record.error_code or "card_declined",
        )
    return record
