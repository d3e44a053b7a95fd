"""Custom providers: account-defined `custom-{slug}` upstreams, unique by slug per account.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custom_providers",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("link", sa.String(2048), nullable=True),
        sa.Column("enable", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("beta", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("curl_example", sa.Text, nullable=True),
        sa.Column("js_example", sa.Text, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("position", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("account_id", "slug", name="uq_custom_providers_slug"),
    )


def downgrade() -> None:
    op.drop_table("custom_providers")
