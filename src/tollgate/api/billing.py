"""The billing API under `/client/v4/accounts/{account_id}/ai-gateway/billing`, as the official
`cloudflare` SDK (`client.ai_gateway.billing`) calls it, plus the Stripe webhook.

    GET    /credit-balance     read  balance (dollars), payment method, auto top-up config
    POST   /topup              edit  {amount (cents, 1000..1000000), payment_method_id?};
                                     header Idempotency-Key (optional; a replay returns the same
                                     top-up and credits once) -> {payment_intent_id, client_secret,
                                     onboarding, brand, last4}; a declined card is a 402
    POST   /topup/status       read  {payment_intent_id} -> {payment_intent_id,
                                     status: completed|pending|failed}; unknown id: 404
    GET    /topup/limits       read  {minimum, maximum} cents, fee_percent
    GET    /topup/config       read  {amount, threshold, disabledReason, error, lastFailedAt}
    POST   /topup/config       edit  {amount (cents, >= 1000), threshold (cents, >= 500),
                                     monthly_cap? (cents, >= amount; a tollgate extension)}
    DELETE /topup/config       edit  -> {deleted}
    GET    /spending-limit     read  {config: {amount (cents), duration, strategy}, enabled}
    POST   /spending-limit     edit  {amount (cents, >= 100), duration: daily|weekly|monthly,
                                     strategy: fixed|sliding}: live, not deprecated
    DELETE /spending-limit     edit  -> {deleted}
    GET    /usage-history      read  ?value_grouping_window=day|hour&start_time&end_time (ms)
    GET    /invoice-history    read  ?type=auto|manual|all&page&per_page: top-up invoices
    GET    /invoice-preview    read  this UTC month's usage statement, one line per model
    POST   /payment-method     edit  tollgate extension: sandbox {card_number, exp_month,
                                     exp_year, cvc} of a Stripe test card, or {payment_method_id};
                                     stripe {payment_method_id} from Stripe.js
    DELETE /payment-method     edit  -> {deleted}

    POST   /stripe/webhook     (no token; `Stripe-Signature`) `stripe_webhook_router`

Units (PRODUCT.md §2.2): request amounts are integer cents (a float, string, boolean, zero,
negative or fractional amount is a 400 naming the field, and nothing changes); balances are
dollars as JSON numbers; invoice amounts are cents, as in Stripe's invoices. Usage history values
are dollars. `lastFailedAt` is milliseconds since the epoch. Under the sandbox payment provider
every top-up response says `"sandbox": true` and "simulated, no money moved".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate import money
from tollgate.api.auth import authorize_api_call
from tollgate.api.billing_fields import (
    MAX_LIMIT_CENTS,
    MIN_LIMIT_CENTS,
    bad_field,
    cents,
    choice,
    ms_param,
)
from tollgate.api.envelope import cloudflare_response, page_request
from tollgate.api.openapi import error_responses, json_body
from tollgate.billing.payments import (
    PaymentMethodRejected,
    WebhookRejected,
    build_payment_provider,
)
from tollgate.billing.payments.sandbox import SIMULATED
from tollgate.billing.payments.statements import (
    invoice_json,
    preview_json,
    topup_config_json,
    usage_history_json,
)
from tollgate.billing.topup import (
    MAX_TOPUP_CENTS,
    MIN_AUTO_AMOUNT_CENTS,
    MIN_AUTO_THRESHOLD_CENTS,
    MIN_TOPUP_CENTS,
    TopUps,
)
from tollgate.errors import InvalidRequest, PayloadTooLarge
from tollgate.services import Services
from tollgate.store import accounts as account_repo
from tollgate.store import limits as limit_repo
from tollgate.store import payments as payments_repo
from tollgate.store import usage as usage_repo
from tollgate.store.payments import PaymentProfile, TopUpRecord

_STATUS = {"succeeded": "completed", "failed": "failed"}


def build_topups(services: Services) -> TopUps:
    """The top-up service from the settings (the lead wires one into `Services`)."""
    return TopUps(
        services.store,
        build_payment_provider(services.settings),
        fee_percent=services.settings.billing.purchase_fee_percent,
    )


def _card_json(profile: PaymentProfile | None) -> dict[str, Any] | None:
    if profile is None or profile.payment_method_id is None:
        return None
    return {
        "brand": profile.brand,
        "last4": profile.last4,
        "exp_month": profile.exp_month,
        "exp_year": profile.exp_year,
    }


class BillingRoutes:
    def __init__(self, services: Services, topups: TopUps) -> None:
        self.services = services
        self.topups = topups
        self.store = services.store

    def _label(self) -> dict[str, Any]:
        provider = self.topups.provider
        label: dict[str, Any] = {"payment_provider": provider.name, "sandbox": provider.sandbox}
        if provider.sandbox:
            label["description"] = SIMULATED
        return label

    async def _auth(self, request: Request, account_id: str, permission: str) -> None:
        await authorize_api_call(
            self.services.tokens,
            request.headers.get("authorization"),
            account_id,
            permission,
            sent_global_key="x-auth-key" in request.headers,
        )

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.services.settings.server.max_body_bytes
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"The request body is not valid JSON ({exc}).", code="invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise InvalidRequest(
                'The request body must be a JSON object, e.g. {"amount": 2500}.',
                code="invalid_json",
            )
        return body

    # --- balance and payment method -------------------------------------------------------------

    async def credit_balance(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        account = await account_repo.get_account(self.store, account_id)
        assert account is not None  # authorize_api_call checked it exists and is active
        profile = await self.topups.profile(account_id)
        config = await self.topups.auto_config(account_id)
        return cloudflare_response(
            {
                "balance": money.to_dollars_float(account.balance_nanos),
                "has_default_payment_method": _card_json(profile) is not None,
                "payment_method": _card_json(profile),
                "topup_config": topup_config_json(config),
                "first_topup_success": await payments_repo.has_succeeded_topup(
                    self.store, account_id
                ),
                "currency": "USD",
                "held": money.to_dollars_float(account.held_nanos),
                "available": money.to_dollars_float(account.balance_nanos - account.held_nanos),
                "balance_exact": money.header_dollars(account.balance_nanos),
                **self._label(),
            }
        )

    async def add_payment_method(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        body = await self._body(request)
        try:
            profile = await self.topups.save_payment_method(account_id, body)
        except PaymentMethodRejected as exc:
            raise InvalidRequest(
                f"{exc.param}: {exc.message}", code=exc.code, param=exc.param
            ) from None
        return cloudflare_response(
            {
                "has_default_payment_method": True,
                "payment_method": _card_json(profile),
                **self._label(),
            }
        )

    async def remove_payment_method(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        deleted = await self.topups.remove_payment_method(account_id)
        return cloudflare_response({"deleted": deleted, **self._label()})

    # --- top-ups --------------------------------------------------------------------------------

    def _topup_json(self, record: TopUpRecord) -> dict[str, Any]:
        return {
            "payment_intent_id": record.payment_intent_id or record.id,
            "client_secret": record.client_secret if record.status == "requires_action" else None,
            "onboarding": record.payment_method_id is None,
            "brand": record.brand,
            "last4": record.last4,
            "status": _STATUS.get(record.status, "pending"),
            "amount": record.amount_cents,
            "fee": record.fee_cents,
            "charged": record.charge_cents,
            **self._label(),
        }

    async def create_topup(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        body = await self._body(request)
        amount = cents(body, "amount", MIN_TOPUP_CENTS, MAX_TOPUP_CENTS)
        method = body.get("payment_method_id")
        if method is not None and (not isinstance(method, str) or not 0 < len(method) <= 255):
            raise bad_field(
                "payment_method_id must be a payment method id string", "payment_method_id"
            )
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
            raise bad_field(
                "Idempotency-Key must be 1 to 255 printable ASCII characters", "idempotency-key"
            )
        record = await self.topups.create_topup(
            account_id, amount, idempotency_key=key, payment_method_id=method
        )
        return cloudflare_response(self._topup_json(record))

    async def topup_status(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        body = await self._body(request)
        intent = body.get("payment_intent_id")
        if not isinstance(intent, str) or not 0 < len(intent) <= 255:
            raise bad_field(
                "payment_intent_id is required: the id POST .../billing/topup returned",
                "payment_intent_id",
            )
        record = await self.topups.topup_status(account_id, intent)
        result = {"payment_intent_id": intent, "status": _STATUS.get(record.status, "pending")}
        if record.status == "failed":
            result["error"] = f"{record.error_code}: {record.error_message}"
        return cloudflare_response({**result, **self._label()})

    async def topup_limits(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        fee = self.topups.fee_percent
        return cloudflare_response(
            {
                "minimum": MIN_TOPUP_CENTS,
                "maximum": MAX_TOPUP_CENTS,
                "currency": "usd",
                "fee_percent": str(fee),
                **self._label(),
            }
        )

    # --- auto top-up config ---------------------------------------------------------------------

    async def get_topup_config(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        return cloudflare_response(topup_config_json(await self.topups.auto_config(account_id)))

    async def set_topup_config(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        body = await self._body(request)
        amount = cents(body, "amount", MIN_AUTO_AMOUNT_CENTS, MAX_TOPUP_CENTS)
        threshold = cents(body, "threshold", MIN_AUTO_THRESHOLD_CENTS, MAX_TOPUP_CENTS)
        cap = None
        if body.get("monthly_cap") is not None:
            cap = cents(body, "monthly_cap", amount, MAX_LIMIT_CENTS)
        profile = await self.topups.profile(account_id)
        if profile is None or profile.payment_method_id is None:
            raise InvalidRequest(
                "Auto top-up needs a payment method: add one with POST "
                ".../ai-gateway/billing/payment-method first.",
                code="payment_method_required",
                param="payment_method_id",
            )
        config = await self.topups.set_auto_config(
            account_id, threshold_cents=threshold, amount_cents=amount, monthly_cap_cents=cap
        )
        return cloudflare_response(topup_config_json(config))

    async def delete_topup_config(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        return cloudflare_response({"deleted": await self.topups.delete_auto_config(account_id)})

    # --- spending limit -------------------------------------------------------------------------

    async def get_spending_limit(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        limit = await limit_repo.get_account_limit(self.store, account_id)
        if limit is None:
            return cloudflare_response({"config": {}, "enabled": False})
        config = {
            "amount": money.round_half_up(Fraction(limit.amount_nanos, money.NANOS_PER_CENT)),
            "duration": limit.duration,
            "strategy": limit.strategy,
        }
        return cloudflare_response({"config": config, "enabled": True})

    async def set_spending_limit(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        body = await self._body(request)
        amount = cents(body, "amount", MIN_LIMIT_CENTS, MAX_LIMIT_CENTS)
        duration = choice(body, "duration", ("daily", "weekly", "monthly"))
        strategy = choice(body, "strategy", ("fixed", "sliding"))
        await limit_repo.set_account_limit(
            self.store, account_id, money.from_cents(amount), duration, strategy
        )
        self.services.meter.forget_account_limit(account_id)  # the data plane sees it at once
        config = {"amount": amount, "duration": duration, "strategy": strategy}
        return cloudflare_response({"config": config, "enabled": True})

    async def delete_spending_limit(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "edit")
        deleted = await limit_repo.delete_account_limit(self.store, account_id)
        self.services.meter.forget_account_limit(account_id)
        return cloudflare_response({"deleted": deleted})

    # --- history --------------------------------------------------------------------------------

    async def usage_history(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        query = request.query_params
        window = query.get("value_grouping_window")
        if window not in ("day", "hour"):
            raise bad_field(
                "value_grouping_window is required: day or hour", "value_grouping_window"
            )
        width = 86_400 if window == "day" else 3_600
        now = self.topups.clock()
        end = ms_param(query.get("end_time"), "end_time") or now
        default_span = timedelta(days=30) if window == "day" else timedelta(hours=24)
        start = ms_param(query.get("start_time"), "start_time") or end - default_span
        if start >= end:
            raise bad_field("start_time must be before end_time", "start_time")
        first = int(start.timestamp()) // width * width
        last = -(-int(end.timestamp()) // width) * width
        if (last - first) // width > 1000:
            raise bad_field(
                f"start_time: the range spans more than 1000 {window}s; narrow it", "start_time"
            )
        buckets = await usage_repo.usage_buckets(
            self.store,
            account_id,
            start=datetime.fromtimestamp(first, UTC),
            end=datetime.fromtimestamp(last, UTC),
            width_seconds=width,
        )
        return cloudflare_response(usage_history_json(buckets, first, last, width))

    async def invoice_history(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        kind = request.query_params.get("type") or "all"
        if kind not in ("auto", "manual", "all"):
            raise bad_field(f"type must be auto, manual or all; got '{kind[:40]}'", "type")
        paging = page_request(request.query_params)
        records, total = await payments_repo.list_topups(
            self.store,
            account_id,
            kind=None if kind == "all" else kind,
            offset=paging.offset,
            limit=paging.per_page,
        )
        invoices = [invoice_json(r, sandbox=self.topups.provider.sandbox) for r in records]
        pagination = {
            "has_more": paging.offset + len(records) < total,
            "page": paging.page,
            "per_page": paging.per_page,
            "total_count": total,
        }
        return cloudflare_response({"invoices": invoices, "pagination": pagination})

    async def invoice_preview(self, request: Request, account_id: str) -> Response:
        await self._auth(request, account_id, "read")
        now = self.topups.clock()
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        lines = await usage_repo.usage_by_model(self.store, account_id, start=start, end=end)
        return cloudflare_response(preview_json(account_id, lines, start, end))


def billing_router(services: Services, topups: TopUps | None = None) -> APIRouter:
    """Mount at `/client/v4`. Pass the shared `TopUps` (else one is built from the settings)."""
    routes = BillingRoutes(services, topups or build_topups(services))
    router = APIRouter(prefix="/accounts/{account_id}/ai-gateway/billing", tags=["billing"])
    add = router.add_api_route
    add("/credit-balance", routes.credit_balance, methods=["GET"], summary="Credit balance")
    add(
        "/topup",
        routes.create_topup,
        methods=["POST"],
        summary="Top up credits",
        openapi_extra=json_body(("amount", "payment_method_id"), "amount"),
        responses=error_responses(402, 409, 502),  # declined; key reused; payment provider down
    )
    add(
        "/topup/status",
        routes.topup_status,
        methods=["POST"],
        summary="Top-up status",
        openapi_extra=json_body(("payment_intent_id",), "payment_intent_id"),
    )
    add("/topup/limits", routes.topup_limits, methods=["GET"], summary="Top-up limits")
    add("/topup/config", routes.get_topup_config, methods=["GET"], summary="Auto top-up config")
    add(
        "/topup/config",
        routes.set_topup_config,
        methods=["POST"],
        summary="Set auto top-up",
        openapi_extra=json_body(("amount", "threshold", "monthly_cap"), "amount", "threshold"),
    )
    add("/topup/config", routes.delete_topup_config, methods=["DELETE"], summary="Remove it")
    add("/spending-limit", routes.get_spending_limit, methods=["GET"], summary="Spending limit")
    add(
        "/spending-limit",
        routes.set_spending_limit,
        methods=["POST"],
        summary="Set the limit",
        openapi_extra=json_body(
            ("amount", "duration", "strategy"), "amount", "duration", "strategy"
        ),
    )
    add("/spending-limit", routes.delete_spending_limit, methods=["DELETE"], summary="Remove it")
    add("/usage-history", routes.usage_history, methods=["GET"], summary="Usage history")
    add("/invoice-history", routes.invoice_history, methods=["GET"], summary="Top-up invoices")
    add("/invoice-preview", routes.invoice_preview, methods=["GET"], summary="Usage statement")
    add(
        "/payment-method",
        routes.add_payment_method,
        methods=["POST"],
        summary="Add a card",
        openapi_extra=json_body(
            ("card_number", "exp_month", "exp_year", "cvc", "payment_method_id")
        ),
        responses=error_responses(502),  # the payment provider is down
    )
    add("/payment-method", routes.remove_payment_method, methods=["DELETE"], summary="Remove it")
    return router


# The handler reads the raw body itself (the signature covers its bytes); /openapi.json says so.
_WEBHOOK_REQUEST: dict[str, Any] = {
    "parameters": [
        {"name": "Stripe-Signature", "in": "header", "required": True, "schema": {"type": "string"}}
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}


def stripe_webhook_router(services: Services, topups: TopUps | None = None) -> APIRouter:
    """`POST /stripe/webhook`, mounted at the root (no prefix). Stripe signs each delivery; the
    signature is verified on the raw body before anything is read or written."""
    shared = topups or build_topups(services)
    router = APIRouter(tags=["billing"])

    limit = services.settings.server.max_body_bytes

    async def stripe_webhook(request: Request) -> Response:
        payload = bytearray()
        async for chunk in request.stream():
            payload += chunk
            if len(payload) > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        try:
            outcome = await shared.handle_webhook(
                bytes(payload), request.headers.get("stripe-signature")
            )
        except WebhookRejected as exc:
            raise InvalidRequest(
                str(exc), code="invalid_signature", param="stripe-signature"
            ) from None
        body = orjson.dumps({"received": True, "result": outcome})
        return Response(body, media_type="application/json")

    router.add_api_route(
        "/stripe/webhook",
        stripe_webhook,
        methods=["POST"],
        summary="Stripe",
        openapi_extra=_WEBHOOK_REQUEST,
    )
    return router
