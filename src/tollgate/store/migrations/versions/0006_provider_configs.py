"""Stored provider keys (BYOK): `provider_configs`, secrets encrypted at rest.

Revision ID: 0006
Revises: 0005
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # the provider_configs table lands with the stored-keys feature


def downgrade() -> None:
    pass
