"""Holds, spending-limit buckets and the account spending limit.

See `tollgate.store.schema_billing` for what each table means. Self-contained on purpose: a
migration must not change when the current schema module does.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False, unique=True),
        sa.Column("gateway_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("recovery_charge_nanos", sa.BigInteger, nullable=False),
        sa.Column("uses_credits", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("buckets", sa.Text, nullable=False, server_default="[]"),
        sa.Column("state", sa.String(16), nullable=False, server_default="open"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("forwarded_at", UTCDateTime, nullable=True),
        sa.Column("resolved_at", UTCDateTime, nullable=True),
        sa.Column("charged_nanos", sa.BigInteger, nullable=True),
        sa.Column("estimated", sa.Boolean, nullable=True),
        sa.Column("balance_after_nanos", sa.BigInteger, nullable=True),
        sa.Column("ledger_entry_id", sa.String(32), nullable=True),
        sa.CheckConstraint("state IN ('open', 'settled', 'released')", name="ck_holds_state"),
        sa.CheckConstraint("amount_nanos >= 0", name="ck_holds_amount_nonnegative"),
        sa.CheckConstraint(
            "recovery_charge_nanos >= 0 AND recovery_charge_nanos <= amount_nanos",
            name="ck_holds_recovery_charge",
        ),
        sa.CheckConstraint("charged_nanos IS NULL OR charged_nanos >= 0", name="ck_holds_charged"),
    )
    op.create_index("ix_holds_state_expires", "holds", ["state", "expires_at"])
    op.create_index("ix_holds_account_state", "holds", ["account_id", "state"])
    op.create_table(
        "spend_buckets",
        sa.Column("limit_key", sa.String(512), primary_key=True),
        sa.Column("bucket_start", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "account_spending_limits",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("duration", sa.String(16), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("amount_nanos > 0", name="ck_account_limit_amount"),
        sa.CheckConstraint(
            "duration IN ('daily', 'weekly', 'monthly')", name="ck_account_limit_duration"
        ),
        sa.CheckConstraint("strategy IN ('fixed', 'sliding')", name="ck_account_limit_strategy"),
    )


def downgrade() -> None:
    for table in ("account_spending_limits", "spend_buckets", "holds"):
        op.drop_table(table)
