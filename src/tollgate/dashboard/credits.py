"""The Credits page (issue: dashboard item 3): credits available, the payment method on file,
top-ups, auto top-up and the top-up invoices, through the same `TopUps` service
(`services.topups`) and store functions as the billing API.

GET  /dashboard/{account_id}/credits                    the page (?page=N: older invoices)  (read)
POST /dashboard/{account_id}/credits/payment-method     add or replace the card, or remove  (edit)
POST /dashboard/{account_id}/credits/auto-topup         set auto top-up, or remove it       (edit)
POST /dashboard/{account_id}/credits/topup              amount -> the confirm step          (edit)
POST /dashboard/{account_id}/credits/topup/pay          pay -> the result page              (edit)
GET  /dashboard/{account_id}/credits/topups/{topup_id}  a top-up's outcome                  (read)

The top-up steps live in `credits_topup.py`, the forms' parsing and words in `credits_forms.py`.

Payment methods: under the sandbox provider, a Stripe test card typed into a form (only test
numbers are accepted; nothing is charged). Under Stripe, a PaymentMethod id (`pm_...`) pasted in:
the dashboard loads no Stripe.js (no CDN), and raw card numbers never pass through tollgate.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.billing.payments import PaymentMethodRejected
from tollgate.billing.payments.auto import month_bounds
from tollgate.billing.topup import (
    MAX_TOPUP_CENTS,
    MIN_AUTO_AMOUNT_CENTS,
    MIN_AUTO_THRESHOLD_CENTS,
    MIN_TOPUP_CENTS,
)
from tollgate.dashboard.core import DashboardCore, Viewer
from tollgate.dashboard.credits_forms import (
    FormErrors,
    auto_error_words,
    card_details,
    card_error,
    decline_words,
    page_number,
    parse_auto_topup,
    percent_words,
    shown_test_cards,
    when,
)
from tollgate.dashboard.credits_topup import TopUpFlow
from tollgate.dashboard.web import redirect
from tollgate.errors import GatewayError
from tollgate.store import payments as payments_repo
from tollgate.store.models import Account
from tollgate.store.payments import AutoTopUpConfig, PaymentProfile, TopUpRecord

INVOICES_PER_PAGE = 20
# Notices after a change, chosen by a code in the URL (never text from the URL itself).
NOTICES = {
    "card-saved": "Payment method saved. You can top up credits now.",
    "card-removed": "Payment method removed. Top-ups and auto top-up need a new one.",
    "auto-saved": "Auto top-up saved and turned on.",
    "auto-removed": "Auto top-up removed. Credits are added only when you top up.",
}
# The billing API's bounds, in cents, for the forms' labels.
BOUNDS = {
    "topup_min": MIN_TOPUP_CENTS,
    "topup_max": MAX_TOPUP_CENTS,
    "threshold_min": MIN_AUTO_THRESHOLD_CENTS,
    "auto_min": MIN_AUTO_AMOUNT_CENTS,
}
STATUS_WORDS = {
    "succeeded": "Paid",
    "failed": "Declined",
    "requires_action": "Needs authentication",
}


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    """One top-up as a line of the invoice history (what `GET billing/invoice-history` lists)."""

    record: TopUpRecord
    date: str
    kind: str
    status: str
    reason: str | None

    @classmethod
    def of(cls, record: TopUpRecord) -> InvoiceRow:
        failed = record.status == "failed"
        return cls(
            record=record,
            date=when(record.created_at),
            kind="Auto" if record.kind == "auto" else "Manual",
            status=STATUS_WORDS.get(record.status, "Pending"),
            reason=decline_words(record.error_code, record.error_message) if failed else None,
        )


@dataclass(frozen=True, slots=True)
class CreditsData:
    account: Account
    available_nanos: int
    card: PaymentProfile | None  # None when there is no payment method on file
    auto: AutoTopUpConfig | None
    auto_this_month_cents: int  # auto top-ups of this UTC month that succeeded or may yet
    invoices: list[InvoiceRow]
    page: int
    has_more: bool
    fee_percent: Decimal

    @property
    def fee_words(self) -> str:
        return percent_words(self.fee_percent)


class CreditsPage:
    """The page, its payment method and auto top-up forms; `TopUpFlow` renders through it."""

    def __init__(self, core: DashboardCore) -> None:
        self.core = core
        self.topups = core.services.topups

    @property
    def sandbox(self) -> bool:
        return self.topups.provider.sandbox

    async def card_on_file(self, account_id: str) -> PaymentProfile | None:
        profile = await self.topups.profile(account_id)
        return profile if profile is not None and profile.payment_method_id else None

    async def load(self, account: Account, page: int = 1) -> CreditsData:
        store = self.core.services.store
        records, total = await payments_repo.list_topups(
            store,
            account.id,
            kind=None,
            offset=(page - 1) * INVOICES_PER_PAGE,
            limit=INVOICES_PER_PAGE,
        )
        auto = await self.topups.auto_config(account.id)
        month_used = 0
        if auto is not None and auto.monthly_cap_cents is not None:
            start, next_month = month_bounds(self.topups.clock())
            month_used = await payments_repo.auto_topup_cents(store, account.id, start, next_month)
        return CreditsData(
            account=account,
            available_nanos=account.balance_nanos - account.held_nanos,
            card=await self.card_on_file(account.id),
            auto=auto,
            auto_this_month_cents=month_used,
            invoices=[InvoiceRow.of(r) for r in records],
            page=page,
            has_more=page * INVOICES_PER_PAGE < total,
            fee_percent=self.topups.fee_percent,
        )

    async def show(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        page = page_number(request.query_params.get("page"))
        notice = NOTICES.get(request.query_params.get("done", ""))
        return await self.render(viewer, notice=notice, page=page)

    async def render(
        self,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
        page: int = 1,
    ) -> Response:
        context = self.core.shell(
            viewer,
            "credits",
            data=await self.load(viewer.account, page),
            notice=notice,
            error=error,
            errors=errors or {},
            form=form or {},
            test_cards=shown_test_cards(),
            stripe=not self.sandbox,
            bounds=BOUNDS,
            when=when,
            auto_error_words=auto_error_words,
        )
        return self.core.pages.render("credits.html", context, status=status)

    async def rerender(self, viewer: Viewer, error: str, status: int) -> Response:
        return await self.render(viewer, error=error, status=status)

    def done(self, viewer: Viewer, code: str) -> Response:
        return redirect(f"{viewer.url}/credits?done={code}")

    # --- payment method -------------------------------------------------------------------------

    async def save_payment_method(self, request: Request) -> Response:
        posted = await self.core.posted(request, self.rerender, what="change the payment method")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        account_id = viewer.account.id
        if form.get("action") == "remove":
            await self.topups.remove_payment_method(account_id)
            return self.done(viewer, "card-removed")
        # The card number and CVC are never written back into the page.
        kept = {name: form.get(name, "") for name in ("exp_month", "exp_year", "payment_method_id")}
        try:
            details = card_details(form, sandbox=self.sandbox)
            await self.topups.save_payment_method(account_id, details)
        except FormErrors as exc:
            return await self.render(viewer, errors=exc.errors, form=kept, status=400)
        except PaymentMethodRejected as exc:
            refused = card_error(exc, sandbox=self.sandbox)
            return await self.render(viewer, errors=refused.errors, form=kept, status=400)
        except GatewayError as exc:  # the provider did not answer (UpstreamUnavailable)
            message = (
                f"The payment provider did not save the card: {exc.message} Nothing was "
                "changed. Try again in a moment."
            )
            return await self.render(viewer, error=message, form=kept, status=exc.status)
        return self.done(viewer, "card-saved")

    # --- auto top-up ----------------------------------------------------------------------------

    async def save_auto_topup(self, request: Request) -> Response:
        posted = await self.core.posted(request, self.rerender, what="change auto top-up")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        account_id = viewer.account.id
        if form.get("action") == "remove":
            await self.topups.delete_auto_config(account_id)
            return self.done(viewer, "auto-removed")
        if await self.card_on_file(account_id) is None:
            message = "Auto top-up charges your payment method: add one first, then set it up."
            return await self.render(viewer, errors={"auto": message}, form=form, status=400)
        try:
            wanted = parse_auto_topup(form)
        except FormErrors as exc:
            return await self.render(viewer, errors=exc.errors, form=form, status=400)
        # As `POST billing/topup/config`: replacing the config re-enables it and clears failures.
        await self.topups.set_auto_config(
            account_id,
            threshold_cents=wanted.threshold_cents,
            amount_cents=wanted.amount_cents,
            monthly_cap_cents=wanted.monthly_cap_cents,
        )
        return self.done(viewer, "auto-saved")


def routes(core: DashboardCore) -> list[Route]:
    page = CreditsPage(core)
    flow = TopUpFlow(page)
    base = "/{account_id}/credits"
    return [
        Route(base, page.show, methods=["GET"]),
        Route(f"{base}/payment-method", page.save_payment_method, methods=["POST"]),
        Route(f"{base}/auto-topup", page.save_auto_topup, methods=["POST"]),
        Route(f"{base}/topup", flow.review, methods=["POST"]),
        Route(f"{base}/topup/pay", flow.pay, methods=["POST"]),
        Route(f"{base}/topups/{{topup_id}}", flow.result, methods=["GET"]),
    ]
