"""Finding a top-up by the idempotency key it was claimed with.

The dashboard's pay form carries an idempotency key made at its confirm step; after the charge
(a decline raises rather than returning the row) the page needs the row that key claimed, to show
its outcome. `(account_id, idempotency_key)` is unique (`payments.claim_topup`), so there is at
most one.
"""

from __future__ import annotations

from sqlalchemy import select

from tollgate.store.engine import Store
from tollgate.store.payments import TopUpRecord
from tollgate.store.schema_payments import topups


async def find_topup_by_key(
    store: Store, account_id: str, idempotency_key: str
) -> TopUpRecord | None:
    """The account's top-up claimed with `idempotency_key`, or None."""
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(topups).where(
                    topups.c.account_id == account_id,
                    topups.c.idempotency_key == idempotency_key,
                )
            )
        ).first()
    if row is None:
        return None
    return TopUpRecord(**{name: getattr(row, name) for name in TopUpRecord.__dataclass_fields__})
