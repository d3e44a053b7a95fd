"""One account's books read in one consistent snapshot: what `tollgate.billing.ledger.
check_invariants` checks (the balance against its entries, held amounts against open holds,
spend buckets against their holds). Read-only; only the invariant checks and tests use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select

from tollgate.store.engine import Store
from tollgate.store.holds import Hold, Settlement, hold_of_row, settlement_of
from tollgate.store.ledger import AccountMissing
from tollgate.store.schema import accounts, ledger_entries
from tollgate.store.schema_billing import credit_leases, holds, spend_buckets


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: str
    kind: str
    amount_nanos: int
    balance_after_nanos: int
    reference: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """Everything the ledger invariants are checked on, read in one consistent snapshot."""

    balance_nanos: int
    held_nanos: int
    entries: tuple[EntryRow, ...]  # in seq order
    holds: tuple[Hold, ...]
    resolutions: dict[str, Settlement]  # hold id -> result, for resolved holds
    buckets: dict[tuple[str, int], int]  # every bucket of the given key prefixes
    leased_nanos: int = 0  # `accounts.leased_nanos`
    lease_rows_nanos: int = 0  # the sum of the account's `credit_leases`


async def account_snapshot(
    store: Store, account_id: str, key_prefixes: Sequence[str]
) -> AccountSnapshot:
    async with store.read() as conn:
        if store.dialect == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        account = (
            await conn.execute(
                select(
                    accounts.c.balance_nanos, accounts.c.held_nanos, accounts.c.leased_nanos
                ).where(accounts.c.id == account_id)
            )
        ).first()
        if account is None:
            raise AccountMissing(account_id)
        entry_rows = await conn.execute(
            select(ledger_entries)
            .where(ledger_entries.c.account_id == account_id)
            .order_by(ledger_entries.c.seq)
        )
        entries = tuple(
            EntryRow(r.id, r.kind, r.amount_nanos, r.balance_after_nanos, r.reference, r.created_at)
            for r in entry_rows
        )
        hold_rows = list(await conn.execute(select(holds).where(holds.c.account_id == account_id)))
        leases = await conn.execute(
            select(func.coalesce(func.sum(credit_leases.c.amount_nanos), 0)).where(
                credit_leases.c.account_id == account_id
            )
        )
        lease_rows_nanos = int(leases.scalar_one())
        buckets: dict[tuple[str, int], int] = {}
        if key_prefixes:
            bucket_rows = await conn.execute(
                select(spend_buckets).where(
                    or_(
                        *(
                            spend_buckets.c.limit_key.startswith(p, autoescape=True)
                            for p in key_prefixes
                        )
                    )
                )
            )
            buckets = {(r.limit_key, r.bucket_start): r.amount_nanos for r in bucket_rows}
    return AccountSnapshot(
        balance_nanos=account.balance_nanos,
        held_nanos=account.held_nanos,
        entries=entries,
        holds=tuple(hold_of_row(r) for r in hold_rows),
        resolutions={r.id: settlement_of(r, replayed=True) for r in hold_rows if r.state != "open"},
        buckets=buckets,
        leased_nanos=account.leased_nanos,
        lease_rows_nanos=lease_rows_nanos,
    )
