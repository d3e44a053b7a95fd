"""Foundation: accounts, API tokens, operator tokens, gateways, the ledger.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("balance_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("held_nanos >= 0", name="ck_accounts_held_nonnegative"),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="ck_accounts_status"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("permissions", sa.String(32), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_api_tokens_account", "api_tokens", ["account_id"])
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "gateways",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "seq",
            sa.Integer().with_variant(sa.BigInteger, "postgresql"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(32), nullable=False, unique=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("balance_after_nanos", sa.BigInteger, nullable=False),
        sa.Column("note", sa.String(500), nullable=False, server_default=""),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("account_id", "reference", name="uq_ledger_reference"),
        sa.CheckConstraint(
            "kind IN ('grant', 'topup', 'auto_topup', 'usage', 'refund', 'adjustment')",
            name="ck_ledger_kind",
        ),
    )
    op.create_index("ix_ledger_account_seq", "ledger_entries", ["account_id", "seq"])


def downgrade() -> None:
    for table in ("ledger_entries", "gateways", "operator_tokens", "api_tokens", "accounts"):
        op.drop_table(table)
