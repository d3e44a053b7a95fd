"""Cache events: what other gateway processes must drop from their caches after a change.

See `tollgate.store.cache_events`. AUTOINCREMENT on SQLite, so no id is handed out twice even
after pruning empties the table (readers ask for `id > last`). Self-contained on purpose: a
migration must not change when the schema module does.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_events",
        sa.Column(
            "id",
            sa.Integer().with_variant(sa.BigInteger, "postgresql"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("cache_events")
