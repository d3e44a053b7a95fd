"""Payments: payment profiles, top-ups, auto top-up configs, processed webhook events; the model
a usage entry was billed for, and an index for usage history.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_profiles",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=True),
        sa.Column("payment_method_id", sa.String(255), nullable=True),
        sa.Column("brand", sa.String(32), nullable=True),
        sa.Column("last4", sa.String(4), nullable=True),
        sa.Column("exp_month", sa.Integer, nullable=True),
        sa.Column("exp_year", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "topups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("fee_cents", sa.BigInteger, nullable=False),
        sa.Column("charge_cents", sa.BigInteger, nullable=False),
        sa.Column("payment_method_id", sa.String(255), nullable=True),
        sa.Column("brand", sa.String(32), nullable=True),
        sa.Column("last4", sa.String(4), nullable=True),
        sa.Column("payment_intent_id", sa.String(255), nullable=True, unique=True),
        sa.Column("client_secret", sa.String(500), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.String(500), nullable=True),
        sa.Column("ledger_entry_id", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_topups_idempotency_key"),
        sa.CheckConstraint("kind IN ('manual', 'auto')", name="ck_topups_kind"),
        sa.CheckConstraint(
            "status IN ('creating', 'pending', 'requires_action', 'succeeded', 'failed')",
            name="ck_topups_status",
        ),
        sa.CheckConstraint("amount_cents > 0 AND fee_cents >= 0", name="ck_topups_amounts"),
    )
    op.create_index("ix_topups_account_created", "topups", ["account_id", "created_at"])
    op.create_table(
        "auto_topup_configs",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("threshold_cents", sa.BigInteger, nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("monthly_cap_cents", sa.BigInteger, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("armed", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("last_failed_at", UTCDateTime, nullable=True),
        sa.Column("disabled_reason", sa.String(500), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("in_flight_topup_id", sa.String(32), nullable=True),
        sa.Column("in_flight_since", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("modified_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "payment_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("payment_intent_id", sa.String(255), nullable=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
    )
    # The model a usage entry was billed for (invoice preview's one line per model).
    op.add_column("ledger_entries", sa.Column("model", sa.String(200), nullable=True))
    op.create_index("ix_ledger_account_created", "ledger_entries", ["account_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_account_created", table_name="ledger_entries")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("model")
    for table in ("payment_events", "auto_topup_configs", "topups", "payment_profiles"):
        op.drop_table(table)
