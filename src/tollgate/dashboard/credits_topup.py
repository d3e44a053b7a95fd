"""The Credits page's top-up steps: amount -> confirm -> pay -> result.

1. `review` (POST .../credits/topup): the typed amount, within the billing API's bounds. The
   confirm step shows the amount, the purchase fee (`TopUps.fee`: the configured percent, the one
   rounding rule) and the total the card is charged, and makes the idempotency key its pay form
   carries.
2. `pay` (POST .../credits/topup/pay): `TopUps.create_topup` with that key, as `POST billing/topup`
   with an `Idempotency-Key`, then a 303 to the result page, so a reload never posts again. Posting
   the same form twice (a double click, the back button) replays the same top-up: one charge, one
   credit. If the provider does not answer, the confirm step comes back with the same key, so
   pressing Pay again is safe.
3. `result` (GET .../credits/topups/{id}): succeeded (with the new balance), declined (why, in plain
   words), authentication required, or pending, refreshed from the provider while it is open, as
   `POST billing/topup/status` does.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from tollgate.billing.topup import PaymentDeclined
from tollgate.dashboard.core import Viewer
from tollgate.dashboard.credits_forms import (
    decline_words,
    new_topup_key,
    pay_fields,
    percent_words,
    topup_amount_cents,
    when,
)
from tollgate.dashboard.format import AmountError
from tollgate.dashboard.web import redirect
from tollgate.errors import Conflict, GatewayError, NotFound, UpstreamUnavailable
from tollgate.store import accounts as account_repo
from tollgate.store import payments as payments_repo
from tollgate.store.payments import PaymentProfile
from tollgate.store.topup_lookup import find_topup_by_key

if TYPE_CHECKING:
    from tollgate.dashboard.credits import CreditsPage

NO_CARD = "Add a payment method first: top-ups charge the card on file."
REUSED = (
    "This payment form was already used for a top-up of another amount, so nothing was charged. "
    "Enter the amount again to start a new top-up."
)
OPEN_STATUSES = ("pending", "requires_action")
HEADINGS = {
    "succeeded": "Top-up succeeded",
    "failed": "Top-up declined",
    "authentication": "Authentication required",
    "pending": "Top-up pending",
}


class TopUpFlow:
    """The review, pay and result steps, rendering errors through the Credits page."""

    def __init__(self, page: CreditsPage) -> None:
        self.page = page
        self.core = page.core
        self.topups = page.topups

    async def review(self, request: Request) -> Response:
        posted = await self.core.posted(request, self.page.rerender, what="top up credits")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        card = await self.page.card_on_file(viewer.account.id)
        if card is None:
            return await self.page.render(viewer, errors={"topup": NO_CARD}, status=400)
        try:
            cents = topup_amount_cents(form.get("amount", ""))
        except AmountError as exc:
            errors = {"topup-amount": str(exc)}
            return await self.page.render(viewer, errors=errors, form=form, status=400)
        return self.confirm(viewer, card, cents, new_topup_key())

    def confirm(
        self,
        viewer: Viewer,
        card: PaymentProfile,
        cents: int,
        key: str,
        *,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        fee = self.topups.fee(cents)
        context = self.core.shell(
            viewer,
            "credits",
            card=card,
            amount_cents=cents,
            fee_cents=fee,
            total_cents=cents + fee,
            fee_words=percent_words(self.topups.fee_percent),
            idempotency_key=key,
            error=error,
        )
        return self.core.pages.render("credits_confirm.html", context, status=status)

    async def pay(self, request: Request) -> Response:
        posted = await self.core.posted(request, self.page.rerender, what="top up credits")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        account_id = viewer.account.id
        store = self.core.services.store
        try:
            cents, key = pay_fields(form)
        except AmountError as exc:
            return await self.page.render(viewer, error=str(exc), status=400)
        earlier = await find_topup_by_key(store, account_id, key)
        if earlier is not None and earlier.status != "creating":
            if earlier.amount_cents != cents:
                return await self.page.render(viewer, error=REUSED, status=409)
            return self._to_result(viewer, earlier.id)  # a second submit: the first's outcome
        card = await self.page.card_on_file(account_id)
        if card is None:
            return await self.page.render(viewer, errors={"topup": NO_CARD}, status=400)
        try:
            await self.topups.create_topup(account_id, cents, idempotency_key=key)
        except PaymentDeclined:
            pass  # recorded on the top-up; the result page says why
        except Conflict as exc:
            if exc.code != "topup_in_progress":
                return await self.page.render(viewer, error=REUSED, status=409)
            # The first submit is still charging: the result page shows it as pending.
        except UpstreamUnavailable as exc:
            message = (
                f"The payment provider did not answer ({exc.message}) Pressing Pay again is safe: "
                "this form can never charge twice."
            )
            return self.confirm(viewer, card, cents, key, error=message, status=502)
        except GatewayError as exc:
            return await self.page.render(viewer, error=exc.message, status=exc.status)
        record = await find_topup_by_key(store, account_id, key)
        assert record is not None  # create_topup claimed it before charging
        return self._to_result(viewer, record.id)

    def _to_result(self, viewer: Viewer, topup_id: str) -> Response:
        return redirect(f"{viewer.url}/credits/topups/{topup_id}")

    async def result(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        store = self.core.services.store
        record = await payments_repo.get_topup(store, request.path_params["topup_id"][:64])
        if record is None or record.account_id != viewer.account.id:
            message = "There is no such top-up in this account. The invoice history lists them all."
            return self.core.not_found(request, message)
        account = viewer.account
        if record.status in OPEN_STATUSES and record.payment_intent_id:
            with suppress(NotFound):  # a provider that no longer knows it: show what we have
                record = await self.topups.topup_status(account.id, record.payment_intent_id)
            account = await account_repo.get_account(store, account.id) or account
        outcome = record.status if record.status in ("succeeded", "failed") else "pending"
        if record.status == "requires_action":
            outcome = "authentication"
        reason = None
        if record.status == "failed":
            reason = decline_words(record.error_code, record.error_message)
        context = self.core.shell(
            viewer,
            "credits",
            record=record,
            outcome=outcome,
            heading=HEADINGS[outcome],
            reason=reason,
            when=when,
            available_nanos=account.balance_nanos - account.held_nanos,
        )
        return self.core.pages.render("credits_result.html", context)
