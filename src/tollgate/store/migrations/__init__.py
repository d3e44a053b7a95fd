"""Alembic migrations for the tollgate store (run at start-up and by `tollgate migrate`)."""
