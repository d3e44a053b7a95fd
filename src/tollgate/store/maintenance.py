"""Pruning: resolved holds past their retention, and spend buckets no limit can count any more.

What is prunable is the caller's decision (`tollgate.billing.maintenance`): it passes the
retention cutoff and `is_dead(limit_key, bucket_start)`, true when no live limit can count that
bucket any more. What this module guarantees is that pruning keeps every invariant
`tollgate.billing.ledger.check_invariants` checks, and never changes what a limit counts:

- **A bucket equals the sum of its holds' current amounts** (open: held, settled: charged,
  released: 0). A resolved hold is pruned only when every bucket it counts in is dead, and its
  charge is subtracted from those buckets in the same transaction, so each bucket still equals
  the sum over the holds that still name it. A bucket is deleted only once it is dead and its
  amount is 0. A live bucket is never changed: its spend is what admits or refuses the next
  request. (A dead bucket may still be named by an open hold, a stream older than a short
  window: its amount is not 0 then, and its settlement corrects it as usual.)
- **Every `usage` entry `hold:{id}` names its hold**, except entries written before the pruning
  cutoff (`check_invariants(..., pruned_before=)`): a settled hold is deleted like any other. The
  ledger entry keeps what matters for money (the amount, the model, the note with the token
  counts and whether they were estimated, and the `hold:{id}` reference); the ledger itself is
  append-only and never pruned.
- Open holds are never touched.

**Serialisation** as in `tollgate.store.holds`: every write transaction here works on one
account and first locks its row (on SQLite `BEGIN IMMEDIATE` serialises all writers anyway),
then buckets, then holds: the order admissions and settlements take, so there is no deadlock
with them, and the holds are re-read under the lock (another process may have pruned them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate.store.engine import Store
from tollgate.store.schema import accounts, gateways
from tollgate.store.schema_billing import holds, spend_buckets

IsDead = Callable[[str, int], bool]  # (limit key, bucket start) -> no live limit counts it
Ref = tuple[str, int]  # (limit key, bucket start)


@dataclass(frozen=True, slots=True)
class ResolvedHold:
    """A pruning candidate, as listed (re-read under the account lock before it is pruned)."""

    id: str
    account_id: str
    buckets: tuple[Ref, ...]
    expires_at: datetime


def _refs(text: str) -> tuple[Ref, ...]:
    return tuple((str(key), int(start)) for key, start in orjson.loads(text))


async def resolved_holds(
    store: Store, *, resolved_before: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[ResolvedHold]:
    """One page of resolved holds, both expired and resolved before the cutoff, by expiry then
    id, after the keyset cursor `after`.

    The expiry is what the `(state, expires_at)` index finds candidates by; the resolution time
    keeps a hold recovered long after it expired (at a late restart) for the whole retention.
    """
    query = select(holds.c.id, holds.c.account_id, holds.c.buckets, holds.c.expires_at).where(
        holds.c.state.in_(("settled", "released")),
        holds.c.expires_at < resolved_before,
        holds.c.resolved_at < resolved_before,
    )
    if after is not None:
        expiry, hold_id = after
        query = query.where(
            or_(
                holds.c.expires_at > expiry,
                and_(holds.c.expires_at == expiry, holds.c.id > hold_id),
            )
        )
    async with store.read() as conn:
        rows = await conn.execute(query.order_by(holds.c.expires_at, holds.c.id).limit(limit))
        return [ResolvedHold(r.id, r.account_id, _refs(r.buckets), r.expires_at) for r in rows]


_LOCK_ACCOUNT = select(accounts.c.id).where(accounts.c.id == bindparam("acct")).with_for_update()
_SUBTRACT = (
    update(spend_buckets)
    .where(
        spend_buckets.c.limit_key == bindparam("k"),
        spend_buckets.c.bucket_start == bindparam("s"),
    )
    .values(amount_nanos=spend_buckets.c.amount_nanos - bindparam("c"))
)


async def _lock_account(conn: AsyncConnection, account_id: str) -> bool:
    return (await conn.execute(_LOCK_ACCOUNT, {"acct": account_id})).first() is not None


async def prune_holds(
    store: Store, account_id: str, hold_ids: Sequence[str], is_dead: IsDead
) -> int:
    """Delete these resolved holds of one account, in one transaction, taking each one's charge
    out of its buckets. A hold that is open, gone, or counts in a bucket that is not dead is
    skipped. Returns how many were deleted."""
    if not hold_ids:
        return 0
    async with store.write() as conn:
        if not await _lock_account(conn, account_id):
            return 0
        rows = await conn.execute(
            select(holds.c.id, holds.c.buckets, holds.c.charged_nanos)
            .where(
                holds.c.id.in_(hold_ids),
                holds.c.account_id == account_id,
                holds.c.state != "open",
            )
            .order_by(holds.c.id)
        )
        subtract: dict[Ref, int] = defaultdict(int)
        doomed: list[str] = []
        for row in rows:
            refs = _refs(row.buckets)
            if not all(is_dead(key, start) for key, start in refs):
                continue
            for ref in refs:
                subtract[ref] += row.charged_nanos or 0
            doomed.append(row.id)
        changes = [{"k": k, "s": s, "c": c} for (k, s), c in sorted(subtract.items()) if c]
        if changes:
            await conn.execute(_SUBTRACT, changes)
        if doomed:
            await conn.execute(delete(holds).where(holds.c.id.in_(doomed)))
    return len(doomed)


async def zero_buckets(store: Store, *, after: Ref | None, limit: int) -> list[Ref]:
    """One page of buckets whose amount is 0, by key then start, after the keyset cursor."""
    query = select(spend_buckets.c.limit_key, spend_buckets.c.bucket_start).where(
        spend_buckets.c.amount_nanos == 0
    )
    if after is not None:
        key, start = after
        query = query.where(
            or_(
                spend_buckets.c.limit_key > key,
                and_(spend_buckets.c.limit_key == key, spend_buckets.c.bucket_start > start),
            )
        )
    order = (spend_buckets.c.limit_key, spend_buckets.c.bucket_start)
    async with store.read() as conn:
        rows = await conn.execute(query.order_by(*order).limit(limit))
        return [(r.limit_key, r.bucket_start) for r in rows]


async def delete_zero_buckets(store: Store, account_id: str, refs: Sequence[Ref]) -> int:
    """Delete these buckets of one account (the caller checked they are dead) if their amount is
    still 0 under the account's lock. Returns how many were deleted."""
    if not refs:
        return 0
    async with store.write() as conn:
        if not await _lock_account(conn, account_id):
            return 0
        pairs = tuple_(spend_buckets.c.limit_key, spend_buckets.c.bucket_start)
        deleted = await conn.execute(
            delete(spend_buckets)
            .where(pairs.in_(list(refs)), spend_buckets.c.amount_nanos == 0)
            .returning(spend_buckets.c.limit_key)
        )
        return len(deleted.all())


async def spend_rules(store: Store) -> list[tuple[str, str, Any]]:
    """`(account id, gateway id, spend_limits config)` of every gateway, for the horizons."""
    async with store.read() as conn:
        rows = await conn.execute(select(gateways.c.account_id, gateways.c.id, gateways.c.config))
        return [(r.account_id, r.id, orjson.loads(r.config).get("spend_limits")) for r in rows]
