"""Request logs: one row per data-plane request (tollgate.features.logs).

Revision ID: 0005
Revises: 0004
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # the logs table lands with the logs feature


def downgrade() -> None:
    pass
