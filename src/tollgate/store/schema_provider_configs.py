"""The `provider_configs` table (migration 0006): stored provider keys (BYOK), on `schema.metadata`.

One row per stored key of a gateway: (account, gateway, provider, alias) is unique, and the
row goes when its gateway does (ON DELETE CASCADE). The key itself is only in `ciphertext`,
sealed with AES-256-GCM under the operator's master key (`tollgate.features.stored_keys`);
`key_id` names which master key sealed it, so a changed master key is reported as such.
`secret_preview` is the masked form the API shows; nothing else about the key is stored.
`rate_limit` / `rate_limit_period` are stored and echoed (Cloudflare's fields), not enforced.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from tollgate.store.schema import UTCDateTime, metadata

provider_configs = Table(
    "provider_configs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("gateway_id", String(64), nullable=False),
    Column("provider_slug", String(64), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("default_config", Boolean, nullable=False, server_default=false()),
    Column("secret_id", String(32), nullable=False),
    Column("secret_preview", String(32), nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("rate_limit", Float, nullable=True),
    Column("rate_limit_period", Float, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(
        ["account_id", "gateway_id"],
        ["gateways.account_id", "gateways.id"],
        ondelete="CASCADE",
        name="fk_provider_configs_gateway",
    ),
    # Also the index of the data plane's one lookup: every key of (account, gateway).
    UniqueConstraint(
        "account_id", "gateway_id", "provider_slug", "alias", name="uq_provider_configs_alias"
    ),
)
