"""Alembic environment: always driven programmatically by `tollgate.store.migrate`.

The caller hands over a live (sync-facing) connection in `config.attributes["connection"]`, so the
same code path migrates SQLite and PostgreSQL, at start-up and from the CLI.
"""

from alembic import context

from tollgate.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
