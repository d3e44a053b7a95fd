"""Migrations one revision at a time, reporting each step (for `tollgate migrate`'s progress bar).

The same upgrade as `tollgate.store.migrate.migrate`: one write transaction, and on PostgreSQL
the same advisory lock, so several processes starting at once still migrate once. The only
difference is that each pending revision is applied by its own `alembic upgrade <revision>`, with
`on_pending` told the list first and `on_applied` told each revision as it lands.
"""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tollgate.store.engine import Store
from tollgate.store.migrate import _config, pending_revisions


async def migrate_in_steps(
    store: Store,
    *,
    on_pending: Callable[[list[str]], None],
    on_applied: Callable[[str], None],
) -> list[str]:
    """Bring the schema to the newest revision, one revision at a time; returns those applied.

    The callbacks run on the thread doing the migration, between steps (keep them short).
    """

    def _upgrade(connection: Connection) -> list[str]:
        pending = pending_revisions(connection)
        on_pending(pending)
        for revision in pending:
            command.upgrade(_config(connection), revision)
            on_applied(revision)
        return pending

    async with store.write() as conn:
        if store.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(7381004)"))
        return await conn.run_sync(_upgrade)
