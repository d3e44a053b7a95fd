"""Stored provider keys (BYOK): `provider_configs`, secrets encrypted at rest.

See `tollgate.store.schema_provider_configs` for what each column means. Self-contained on
purpose: a migration must not change when the schema module does.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_configs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("provider_slug", sa.String(64), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("default_config", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("secret_id", sa.String(32), nullable=False),
        sa.Column("secret_preview", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("rate_limit", sa.Float, nullable=True),
        sa.Column("rate_limit_period", sa.Float, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "gateway_id"],
            ["gateways.account_id", "gateways.id"],
            ondelete="CASCADE",
            name="fk_provider_configs_gateway",
        ),
        sa.UniqueConstraint(
            "account_id", "gateway_id", "provider_slug", "alias", name="uq_provider_configs_alias"
        ),
    )


def downgrade() -> None:
    op.drop_table("provider_configs")
