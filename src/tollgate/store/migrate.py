"""Run the Alembic migrations programmatically (at start-up and from `tollgate migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tollgate.store.engine import Store

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def pending_revisions(connection: Connection) -> list[str]:
    current = MigrationContext.configure(connection).get_current_revision()
    script = ScriptDirectory.from_config(_config())
    revisions = [rev.revision for rev in script.iterate_revisions("head", current)]
    return list(reversed(revisions))


def all_revisions() -> list[str]:
    """Every migration shipped with this version, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


async def migrate(store: Store) -> list[str]:
    """Bring the schema to the newest revision; returns the revisions applied, oldest first."""

    def _upgrade(connection: Connection) -> list[str]:
        pending = pending_revisions(connection)
        if pending:
            command.upgrade(_config(connection), "head")
        return pending

    async with store.write() as conn:
        if store.dialect == "postgresql":
            # Several processes may start at once; one migrates, the others wait and find nothing.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7381004)"))
        return await conn.run_sync(_upgrade)


async def current_revision(store: Store) -> str | None:
    async with store.read() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
