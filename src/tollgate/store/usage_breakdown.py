"""Usage per time bucket and model, with the tokens billed, for the dashboard's Usage page.

The same rows as `usage.usage_buckets` (the billing API's `usage-history`): the ledger's `usage`
entries in [start, end), bucketed by `width_seconds` from the epoch (UTC hours or days). Split
by the entry's model (`provider/model`), with how many entries there were (billed requests).

Tokens are not a ledger column: each usage entry's note records what was billed, in the form
`billing.meter._note` writes (`provider/model: 12 in, 34 out, ...`), and that is where they are
read from, so they are exactly the tokens the charge was computed from (estimated ones included),
whether or not the gateway keeps request logs. An entry whose note does not have that form (an
old entry, a manual correction) counts for its cost and request but no tokens.

Rows are grouped by (bucket, model, note) in the database, so identical requests in a bucket
arrive as one row with a count, and only the distinct notes are parsed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from tollgate.store.engine import Store
from tollgate.store.schema import ledger_entries

# The usage history's own bucketing and filter, so both agree to the nano-dollar.
from tollgate.store.usage import _epoch_seconds, _usage_in

# `provider/model: 12 in, 34 out` at the start of the note (after the model id).
_BILLED_TOKENS = re.compile(r": (\d+) in, (\d+) out\b")


@dataclass(frozen=True, slots=True)
class UsageSlice:
    """One model's usage in one bucket. `model` is None for entries without one."""

    bucket: int  # the bucket's start, epoch seconds (UTC)
    model: str | None
    cost_nanos: int
    requests: int
    input_tokens: int
    output_tokens: int


def billed_tokens(note: str) -> tuple[int, int]:
    """`(input, output)` tokens a usage entry's note records; `(0, 0)` if it records none."""
    found = _BILLED_TOKENS.search(note)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


async def usage_slices(
    store: Store, account_id: str, *, start: datetime, end: datetime, width_seconds: int
) -> list[UsageSlice]:
    """Usage in [start, end) per (bucket, model), ordered by bucket then model."""
    c = ledger_entries.c
    bucket = (_epoch_seconds(store) // width_seconds).label("bucket")
    query = (
        select(
            bucket,
            c.model,
            c.note,
            func.sum(-c.amount_nanos).label("nanos"),
            func.count().label("entries"),
        )
        .where(*_usage_in(account_id, start, end))
        .group_by(bucket, c.model, c.note)
    )
    totals: dict[tuple[int, str | None], list[int]] = {}
    async with store.read() as conn:
        for row in await conn.execute(query):
            key = (int(row.bucket) * width_seconds, row.model)
            entries = int(row.entries)
            tokens_in, tokens_out = billed_tokens(row.note or "")
            figures = totals.setdefault(key, [0, 0, 0, 0])
            figures[0] += int(row.nanos)
            figures[1] += entries
            figures[2] += tokens_in * entries
            figures[3] += tokens_out * entries
    return [
        UsageSlice(bucket_start, model, *figures)
        for (bucket_start, model), figures in sorted(
            totals.items(), key=lambda item: (item[0][0], item[0][1] or "")
        )
    ]
