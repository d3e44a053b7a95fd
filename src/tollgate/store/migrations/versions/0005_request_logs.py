"""Request logs: one row per data-plane request (tollgate.features.logs).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from tollgate.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_logs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_type", sa.String(32), nullable=True),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("request_type", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("tokens_in", sa.Integer, nullable=True),
        sa.Column("tokens_out", sa.Integer, nullable=True),
        sa.Column("cost_nanos", sa.BigInteger, nullable=True),
        sa.Column("cost_estimated", sa.Boolean, nullable=False),
        sa.Column("custom_cost", sa.Boolean, nullable=False),
        sa.Column("credential_source", sa.String(16), nullable=True),
        sa.Column("zdr", sa.Boolean, nullable=False),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("event_id", sa.String(256), nullable=True),
        sa.Column("step", sa.Integer, nullable=True),
        sa.Column("user_agent", sa.String(500), nullable=True),
        sa.Column("request_content_type", sa.String(200), nullable=True),
        sa.Column("response_content_type", sa.String(200), nullable=True),
        sa.Column("request_size", sa.BigInteger, nullable=False),
        sa.Column("response_size", sa.BigInteger, nullable=False),
        sa.Column("payload_collected", sa.Boolean, nullable=False),
        sa.Column("request_body", sa.LargeBinary, nullable=True),
        sa.Column("request_complete", sa.Boolean, nullable=False),
        sa.Column("response_body", sa.LargeBinary, nullable=True),
        sa.Column("response_complete", sa.Boolean, nullable=False),
        sa.Column("feedback", sa.Integer, nullable=True),
        sa.Column("score", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_request_logs_gateway_created",
        "request_logs",
        ["account_id", "gateway_id", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_request_logs_gateway_created", table_name="request_logs")
    op.drop_table("request_logs")
