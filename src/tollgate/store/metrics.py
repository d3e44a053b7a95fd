"""What `/metrics` reads from the database: credits held, and usage charged, incrementally.

Summing every `usage` entry at each scrape would read the whole ledger, which only grows. The
ledger is append-only and its `seq` only grows, so the caller keeps a running total and each
scrape reads only the entries after the last one it folded in (a primary-key range):

    edge    = the newest entry that is safe to fold in (see below), or `after` if none
    settled = usage in the entries (after, edge]   -> the caller adds it to its total
    recent  = usage in the entries after `after`   -> reported, but read again next time

On SQLite there is one writer and an entry's `seq` is taken inside the transaction that commits
it, so no entry below the newest visible one can appear later: every visible entry is safe.
On PostgreSQL `seq` comes from a sequence, and transactions may commit out of order: an entry
with a smaller `seq` can become visible after a larger one. There only entries older than
`settled_before` (the caller's lag, a minute) are folded in; a newer one is read again at each
scrape until it is old enough, so a late commit within the lag is still counted. An entry whose
transaction commits later than that after its `created_at` would be missed by the total (never
by the ledger): settlements are short transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from tollgate.store.engine import Store
from tollgate.store.schema import accounts, ledger_entries


@dataclass(frozen=True, slots=True)
class CreditTotals:
    held_nanos: int  # the sum of every account's open holds on credits
    edge_seq: int  # entries up to here are folded into `settled_nanos`
    settled_nanos: int  # usage charged in the entries (after, edge_seq]
    recent_nanos: int  # usage charged in every entry after `after`


async def credit_totals(
    store: Store, *, after: int, settled_before: datetime | None
) -> CreditTotals:
    """One aggregate statement: a scan of `accounts` and of the ledger entries after `after`.

    `settled_before`: fold in only entries created before it (PostgreSQL); None: all visible."""
    entries = ledger_entries.c
    newest = ledger_entries.alias("newest")  # its own FROM: not correlated with the outer scan
    safe = [newest.c.seq > after]
    if settled_before is not None:
        safe.append(newest.c.created_at < settled_before)
    edge = func.coalesce(select(func.max(newest.c.seq)).where(*safe).scalar_subquery(), after)
    charged = -entries.amount_nanos  # usage entries are negative amounts
    held = select(func.coalesce(func.sum(accounts.c.held_nanos), 0)).scalar_subquery()
    query = select(
        held.label("held"),
        edge.label("edge"),
        func.coalesce(func.sum(case((entries.seq <= edge, charged), else_=0)), 0).label("settled"),
        func.coalesce(func.sum(charged), 0).label("recent"),
    ).where(entries.seq > after, entries.kind == "usage")
    async with store.read() as conn:
        row = (await conn.execute(query)).one()
    return CreditTotals(int(row.held), int(row.edge), int(row.settled), int(row.recent))
