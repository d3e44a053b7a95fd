"""Payments in the store: payment profiles, top-ups, auto top-up state, webhook events, and the
usage aggregates the billing history APIs read.

Concurrency: every claim is atomic in the database, never read-then-write.
- A top-up's idempotency key is claimed with INSERT ... ON CONFLICT DO NOTHING on
  `(account_id, idempotency_key)`; the loser reads the winner's row.
- The auto top-up in-flight marker is claimed with one guarded UPDATE (`claim_auto`) whose WHERE
  re-checks, on the row itself, that it is enabled, armed, not in flight, not backing off, and that
  the account's *current* balance is below the threshold. On PostgreSQL the row lock makes a second
  claimer re-evaluate the WHERE after the first commits (and find the marker taken); on SQLite every
  write transaction is `BEGIN IMMEDIATE`. Either way it holds across processes.
- Credits are not here: they are ledger entries (`tollgate.store.ledger.append_entry`) whose
  reference is the payment intent id, applied at most once by the ledger's unique constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Table, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tollgate.money import NANOS_PER_CENT
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.schema import accounts
from tollgate.store.schema_payments import (
    auto_topup_configs,
    payment_events,
    payment_profiles,
    topups,
)


@dataclass(frozen=True, slots=True)
class PaymentProfile:
    account_id: str
    provider: str
    customer_id: str | None
    payment_method_id: str | None
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


@dataclass(frozen=True, slots=True)
class TopUpRecord:
    id: str
    account_id: str
    kind: str  # manual | auto
    provider: str
    idempotency_key: str
    amount_cents: int
    fee_cents: int
    charge_cents: int
    payment_method_id: str | None
    brand: str | None
    last4: str | None
    payment_intent_id: str | None
    client_secret: str | None
    status: str  # creating | pending | requires_action | succeeded | failed
    error_code: str | None
    error_message: str | None
    ledger_entry_id: str | None
    created_at: datetime
    modified_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class AutoTopUpConfig:
    account_id: str
    threshold_cents: int
    amount_cents: int
    monthly_cap_cents: int | None
    enabled: bool
    armed: bool
    consecutive_failures: int
    error: str | None
    last_failed_at: datetime | None
    disabled_reason: str | None
    next_attempt_at: datetime | None
    in_flight_topup_id: str | None
    in_flight_since: datetime | None


def _insert(store: Store, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    module: Any = postgresql if store.dialect == "postgresql" else sqlite
    return module.insert(table)


def _fields(cls: Any, row: Any) -> Any:
    return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


Record = TypeVar("Record")


async def _first(store: Store, cls: type[Record], table: Table, *where: Any) -> Record | None:
    """The first row matching `where`, as a `cls` (a dataclass of the table's columns)."""
    async with store.read() as conn:
        row = (await conn.execute(select(table).where(*where))).first()
    return _fields(cls, row) if row else None


# --- payment profiles ---------------------------------------------------------------------------


async def get_profile(store: Store, account_id: str) -> PaymentProfile | None:
    return await _first(
        store, PaymentProfile, payment_profiles, payment_profiles.c.account_id == account_id
    )


async def save_profile(
    store: Store,
    account_id: str,
    *,
    provider: str,
    customer_id: str | None,
    now: datetime,
    card: dict[str, Any] | None = None,
) -> PaymentProfile:
    """Record the customer and, with `card` (payment_method_id, brand, last4, exp_month,
    exp_year), make it the default payment method. Without `card` the method is left as is."""
    values: dict[str, Any] = {"provider": provider, "customer_id": customer_id, "modified_at": now}
    if card is not None:
        values.update(card)
    statement = _insert(store, payment_profiles).values(
        account_id=account_id, created_at=now, **values
    )
    statement = statement.on_conflict_do_update(index_elements=["account_id"], set_=values)
    async with store.write() as conn:
        await conn.execute(statement)
    found = await get_profile(store, account_id)
    assert found is not None
    return found


async def clear_payment_method(
    store: Store, account_id: str, now: datetime
) -> PaymentProfile | None:
    """Forget the default payment method; returns the profile as it was before (None if none)."""
    before = await get_profile(store, account_id)
    if before is None or before.payment_method_id is None:
        return before
    cleared = dict.fromkeys(("payment_method_id", "brand", "last4", "exp_month", "exp_year"))
    async with store.write() as conn:
        await conn.execute(
            update(payment_profiles)
            .where(payment_profiles.c.account_id == account_id)
            .values(modified_at=now, **cleared)
        )
    return before


# --- top-ups ------------------------------------------------------------------------------------


async def claim_topup(store: Store, *, now: datetime, **values: Any) -> tuple[TopUpRecord, bool]:
    """Insert a top-up in status `creating` unless `(account_id, idempotency_key)` exists.

    Returns the row and True when this call created it, or the existing row and False.
    """
    statement = (
        _insert(store, topups)
        .values(status="creating", created_at=now, modified_at=now, **values)
        .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
        .returning(*topups.c)
    )
    async with store.write() as conn:
        row = (await conn.execute(statement)).first()
        if row is not None:
            return _fields(TopUpRecord, row), True
        existing = (
            await conn.execute(
                select(topups).where(
                    topups.c.account_id == values["account_id"],
                    topups.c.idempotency_key == values["idempotency_key"],
                )
            )
        ).one()
    return _fields(TopUpRecord, existing), False


async def get_topup(store: Store, topup_id: str) -> TopUpRecord | None:
    return await _first(store, TopUpRecord, topups, topups.c.id == topup_id)


async def find_topup_by_intent(store: Store, payment_intent_id: str) -> TopUpRecord | None:
    return await _first(store, TopUpRecord, topups, topups.c.payment_intent_id == payment_intent_id)


async def record_charge(
    store: Store,
    topup_id: str,
    *,
    status: str,
    now: datetime,
    payment_intent_id: str | None = None,
    client_secret: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    ledger_entry_id: str | None = None,
) -> TopUpRecord | None:
    """Move a top-up to `status`. `succeeded` is final: a late or replayed event never moves a
    succeeded top-up back. Returns the row as it is afterwards."""
    values: dict[str, Any] = {"status": status, "modified_at": now}
    if payment_intent_id is not None:
        values["payment_intent_id"] = payment_intent_id
    if client_secret is not None:
        values["client_secret"] = client_secret
    if status == "failed":
        values.update(error_code=error_code, error_message=(error_message or "")[:500] or None)
    if status == "succeeded":
        values.update(ledger_entry_id=ledger_entry_id, completed_at=now, error_code=None)
    async with store.write() as conn:
        await conn.execute(
            update(topups)
            .where(topups.c.id == topup_id, topups.c.status != "succeeded")
            .values(**values)
        )
        row = (await conn.execute(select(topups).where(topups.c.id == topup_id))).first()
    return _fields(TopUpRecord, row) if row else None


async def list_topups(
    store: Store, account_id: str, *, kind: str | None, offset: int, limit: int
) -> tuple[list[TopUpRecord], int]:
    where = topups.c.account_id == account_id
    if kind is not None:
        where = and_(where, topups.c.kind == kind)
    async with store.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(topups).where(where))).scalar()
        rows = await conn.execute(
            select(topups)
            .where(where)
            .order_by(topups.c.created_at.desc(), topups.c.id)
            .offset(offset)
            .limit(limit)
        )
        return [_fields(TopUpRecord, r) for r in rows], int(total or 0)


async def has_succeeded_topup(store: Store, account_id: str) -> bool:
    async with store.read() as conn:
        found = await conn.execute(
            select(topups.c.id)
            .where(topups.c.account_id == account_id, topups.c.status == "succeeded")
            .limit(1)
        )
        return found.first() is not None


async def auto_topup_cents(store: Store, account_id: str, since: datetime, until: datetime) -> int:
    """Auto top-up credits in [since, until) that succeeded or may still succeed (the monthly cap
    counts money that is on its way, so that a pending charge cannot be doubled past the cap)."""
    async with store.read() as conn:
        total = await conn.execute(
            select(func.coalesce(func.sum(topups.c.amount_cents), 0)).where(
                topups.c.account_id == account_id,
                topups.c.kind == "auto",
                topups.c.status != "failed",
                topups.c.created_at >= since,
                topups.c.created_at < until,
            )
        )
        return int(total.scalar_one())


# --- auto top-up configuration and state --------------------------------------------------------


async def get_auto_config(store: Store, account_id: str) -> AutoTopUpConfig | None:
    return await _first(
        store, AutoTopUpConfig, auto_topup_configs, auto_topup_configs.c.account_id == account_id
    )


async def put_auto_config(
    store: Store,
    account_id: str,
    *,
    threshold_cents: int,
    amount_cents: int,
    monthly_cap_cents: int | None,
    now: datetime,
) -> AutoTopUpConfig:
    """Create or replace the config. Replacing re-enables it and clears the failure record; an
    in-flight charge keeps its marker (it finishes on its own)."""
    values: dict[str, Any] = {
        "threshold_cents": threshold_cents,
        "amount_cents": amount_cents,
        "monthly_cap_cents": monthly_cap_cents,
        "enabled": True,
        "armed": True,
        "consecutive_failures": 0,
        "error": None,
        "last_failed_at": None,
        "disabled_reason": None,
        "next_attempt_at": None,
        "modified_at": now,
    }
    statement = (
        _insert(store, auto_topup_configs)
        .values(account_id=account_id, created_at=now, **values)
        .on_conflict_do_update(index_elements=["account_id"], set_=values)
    )
    async with store.write() as conn:
        await conn.execute(statement)
        await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
    found = await get_auto_config(store, account_id)
    assert found is not None
    return found


async def delete_auto_config(store: Store, account_id: str) -> bool:
    async with store.write() as conn:
        result = await conn.execute(
            delete(auto_topup_configs).where(auto_topup_configs.c.account_id == account_id)
        )
        if result.rowcount:
            await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
        return bool(result.rowcount)


def _balance_of(account_id_column: Any) -> Any:
    return (
        select(accounts.c.balance_nanos).where(accounts.c.id == account_id_column).scalar_subquery()
    )


def _threshold_nanos() -> Any:
    return auto_topup_configs.c.threshold_cents * NANOS_PER_CENT


async def rearm_auto(store: Store, account_id: str, now: datetime) -> bool:
    """Arm the next crossing: only while the current balance is at or above the threshold."""
    c = auto_topup_configs.c
    async with store.write() as conn:
        result = await conn.execute(
            update(auto_topup_configs)
            .where(
                c.account_id == account_id,
                c.armed.is_(False),
                c.in_flight_topup_id.is_(None),
                _balance_of(c.account_id) >= _threshold_nanos(),
            )
            .values(armed=True, modified_at=now)
        )
        if result.rowcount:  # other processes' cached state (`billing/payments/auto.py`)
            await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
        return bool(result.rowcount)


async def claim_auto(store: Store, account_id: str, topup_id: str, now: datetime) -> bool:
    """Claim this crossing's one charge: the in-flight marker, atomically (see module doc)."""
    c = auto_topup_configs.c
    async with store.write() as conn:
        result = await conn.execute(
            update(auto_topup_configs)
            .where(
                c.account_id == account_id,
                c.enabled.is_(True),
                c.armed.is_(True),
                c.in_flight_topup_id.is_(None),
                or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
                _balance_of(c.account_id) < _threshold_nanos(),
            )
            .values(armed=False, in_flight_topup_id=topup_id, in_flight_since=now, modified_at=now)
        )
        if result.rowcount:
            await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
        return bool(result.rowcount)


async def take_over_stale(
    store: Store, account_id: str, *, stale_before: datetime, now: datetime
) -> str | None:
    """Take over an in-flight marker older than `stale_before` (its process died); returns the
    top-up id to resume, with the same idempotency key, so the provider cannot charge twice."""
    c = auto_topup_configs.c
    async with store.write() as conn:
        row = (
            await conn.execute(
                select(c.in_flight_topup_id, c.in_flight_since).where(c.account_id == account_id)
            )
        ).first()
        if row is None or row.in_flight_topup_id is None or row.in_flight_since >= stale_before:
            return None
        result = await conn.execute(
            update(auto_topup_configs)
            .where(
                c.account_id == account_id,
                c.in_flight_topup_id == row.in_flight_topup_id,
                c.in_flight_since == row.in_flight_since,
            )
            .values(in_flight_since=now, modified_at=now)
        )
        if not result.rowcount:
            return None
        await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
        return str(row.in_flight_topup_id)


async def finish_auto(
    store: Store,
    account_id: str,
    topup_id: str,
    *,
    outcome: str,
    now: datetime,
    error: str | None = None,
    retry_at: datetime | None = None,
    max_failures: int = 3,
) -> AutoTopUpConfig | None:
    """Release the in-flight marker of `topup_id` with an outcome:

    - `succeeded`: failures reset, `error` cleared; the next crossing is armed by a later
      observation of the balance at or above the threshold (`rearm_auto`).
    - `failed`: `error`, `last_failed_at`, one more consecutive failure; armed again after
      `retry_at`; at `max_failures` in a row, disabled with `disabled_reason`.
    - `deferred` (monthly cap): not a payment failure; armed again at `retry_at`.
    Only the holder of the marker can finish it; anyone else changes nothing (returns None).
    """
    c = auto_topup_configs.c
    values: dict[str, Any] = {"in_flight_topup_id": None, "in_flight_since": None}
    values["modified_at"] = now
    if outcome == "succeeded":
        values.update(consecutive_failures=0, error=None, armed=False, next_attempt_at=None)
    elif outcome == "failed":
        failures = c.consecutive_failures + 1
        values.update(
            consecutive_failures=failures,
            error=(error or "payment failed")[:500],
            last_failed_at=now,
            armed=True,
            next_attempt_at=retry_at,
            enabled=case((failures >= max_failures, False), else_=c.enabled),
            disabled_reason=case(
                (
                    failures >= max_failures,
                    f"Auto top-up was disabled after {max_failures} consecutive failed "
                    f"payments (last: {(error or 'payment failed')[:300]}). Change the payment "
                    "method, then configure auto top-up again to re-enable it.",
                ),
                else_=c.disabled_reason,
            ),
        )
    else:
        values.update(error=(error or "")[:500] or None, armed=True, next_attempt_at=retry_at)
    async with store.write() as conn:
        result = await conn.execute(
            update(auto_topup_configs)
            .where(c.account_id == account_id, c.in_flight_topup_id == topup_id)
            .values(**values)
        )
        if not result.rowcount:
            return None
        row = (
            await conn.execute(select(auto_topup_configs).where(c.account_id == account_id))
        ).one()
        await publish(store, conn, CacheEventKind.AUTO_TOPUP, account_id)
    return _fields(AutoTopUpConfig, row)  # type: ignore[no-any-return]


# --- webhook events -----------------------------------------------------------------------------


async def event_processed(store: Store, event_id: str) -> bool:
    async with store.read() as conn:
        found = await conn.execute(
            select(payment_events.c.id).where(payment_events.c.id == event_id)
        )
        return found.first() is not None


async def record_event(
    store: Store, event_id: str, *, type: str, payment_intent_id: str | None, now: datetime
) -> bool:
    """Remember a processed event; False when it was already recorded."""
    statement = (
        _insert(store, payment_events)
        .values(id=event_id, type=type, payment_intent_id=payment_intent_id, received_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    async with store.write() as conn:
        return bool((await conn.execute(statement)).rowcount)
