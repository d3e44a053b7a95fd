"""Billing statements in the shapes of the `cloudflare` SDK's billing types (and so of Stripe's
invoices): auto top-up config, usage history buckets, top-up invoices, the monthly usage preview.

Conventions: invoice amounts are integer cents, as Stripe's; a line's exact amount (usage is
metered in nano-dollars) is in `pricing.unit_amount_decimal` as a decimal string of cents, and its
`amount` is that rounded by the one rule (`tollgate.money.round_half_up`); the invoice total is the
sum of its lines. Times on invoices are Unix seconds (Stripe's); usage history times are Unix
milliseconds (the SDK's `start_time`/`end_time`), and its values dollars.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

from tollgate import money
from tollgate.billing.payments.sandbox import SIMULATED
from tollgate.store.payments import AutoTopUpConfig, TopUpRecord

_INVOICE_STATUS = {"succeeded": "paid", "failed": "uncollectible"}


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


def exact_cents(nanos: int) -> str:
    """Exact cents as a decimal string: 123456789 nanos -> "12.3456789"."""
    text = format((money.to_dollars(nanos) * 100).normalize(), "f")
    return text


def topup_config_json(config: AutoTopUpConfig | None) -> dict[str, Any]:
    """The auto top-up config (`ConfigGetResponse`, and `credit_balance().topup_config`)."""
    if config is None:
        return {"amount": None, "threshold": None, "enabled": False}
    return {
        "amount": config.amount_cents,
        "threshold": config.threshold_cents,
        "monthly_cap": config.monthly_cap_cents,
        "enabled": config.enabled,
        "disabledReason": config.disabled_reason,
        "error": config.error,
        "lastFailedAt": _ms(config.last_failed_at),
    }


def usage_history_json(
    buckets: list[tuple[int, int]], first: int, last: int, width: int
) -> dict[str, Any]:
    """Every bucket from `first` to `last` (epoch seconds), empty ones as 0."""
    found = dict(buckets)
    history = []
    for start in range(first, last, width):
        nanos = found.get(start, 0)
        history.append(
            {
                "id": f"usage_{width}_{start}",
                "aggregated_value": money.to_dollars_float(nanos),
                "aggregated_value_exact": money.header_dollars(nanos),
                "start_time": start * 1000,
                "end_time": (start + width) * 1000,
            }
        )
    return {"history": history}


def invoice_json(record: TopUpRecord, *, sandbox: bool) -> dict[str, Any]:
    """A top-up as an invoice (`BillingInvoiceHistoryResponse.invoices[]`)."""
    paid = record.charge_cents if record.status == "succeeded" else 0
    amount = money.format_dollars(money.from_cents(record.amount_cents))
    fee = money.format_dollars(money.from_cents(record.fee_cents))
    what = "Auto top-up" if record.kind == "auto" else "Top-up"
    description = f"{what}: {amount} of credits" + (f" + {fee} fee" if record.fee_cents else "")
    if sandbox:
        description += f" ({SIMULATED})"
    return {
        "id": f"topup_{record.id}",
        "amount_due": record.charge_cents,
        "amount_paid": paid,
        "amount_remaining": record.charge_cents - paid,
        "currency": "usd",
        "attempt_count": 0 if record.status == "creating" else 1,
        "attempted": record.status != "creating",
        "auto_advance": False,
        "created": int(record.created_at.timestamp()),
        "created_by": "auto_topup" if record.kind == "auto" else "manual_topup",
        "description": description,
        "invoice_origin": record.kind,
        "invoice_pdf": None,
        "status": _INVOICE_STATUS.get(record.status, "open"),
        "payment_intent_id": record.payment_intent_id,
        "credit_amount": record.amount_cents,
        "fee": record.fee_cents,
        "error": record.error_message if record.status == "failed" else None,
        "sandbox": sandbox,
    }


def preview_json(
    account_id: str,
    lines: list[tuple[str | None, int, int]],
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """This month's usage statement (`BillingInvoicePreviewResponse`): one line per model, paid
    from prepaid credits as it happened (so nothing remains due)."""
    period = {"start": int(start.timestamp()), "end": int(end.timestamp())}
    invoice_lines = []
    total = 0
    for model, nanos, requests in lines:
        amount = money.round_half_up(Fraction(nanos, money.NANOS_PER_CENT))
        total += amount
        name = model or "unattributed usage"
        invoice_lines.append(
            {
                "amount": amount,
                "currency": "usd",
                "description": f"{name}: {money.format_dollars(nanos, 6)} ({requests} requests)",
                "period": period,
                "pricing": {"unit_amount_decimal": exact_cents(nanos)},
                "quantity": 1,
                "pretax_credit_amounts": [{"amount": amount, "type": "credit_balance_transaction"}],
                "model": model,
                "requests": requests,
            }
        )
    total_nanos = sum(nanos for _, nanos, _ in lines)
    return {
        "id": f"upcoming_{account_id}_{start:%Y%m}",
        "amount_due": total,
        "amount_paid": total,
        "amount_remaining": 0,
        "currency": "usd",
        "invoice_lines": invoice_lines,
        "period_start": period["start"],
        "period_end": period["end"],
        "status": "draft",
        "total_exact_usd": money.header_dollars(total_nanos),
    }
