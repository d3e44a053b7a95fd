"""Credit leases: credit a gateway process reserves from an account's balance and admits Unified
Billing requests against in memory (`tollgate.billing.leases`).

`accounts.leased_nanos` is the sum of the account's `credit_leases` amounts; a new hold or lease
is admitted only when `balance - held - leased` covers it. Self-contained on purpose: a
migration must not change when the schema module does.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts", sa.Column("leased_nanos", sa.BigInteger, nullable=False, server_default="0")
    )
    op.create_table(
        "credit_leases",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("amount_nanos >= 0", name="ck_credit_leases_amount"),
    )
    op.create_index("ix_credit_leases_owner", "credit_leases", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_credit_leases_owner", table_name="credit_leases")
    op.drop_table("credit_leases")
    with op.batch_alter_table("accounts") as batch:  # SQLite rebuilds the table
        batch.drop_column("leased_nanos")
