"""SQLAlchemy Core tables: the one schema both engines share.

Money columns are BIGINT nano-dollars. Times are timezone-aware UTC (`UTCDateTime`). The ledger is
append-only: rows in `ledger_entries` are inserted, never updated or deleted, and
`accounts.balance_nanos` always equals the sum of the account's entries (checked in tests).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return (
            value.astimezone(UTC)
            if dialect.name != "sqlite"
            else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("balance_nanos", BigInteger, nullable=False, server_default="0"),
    Column("held_nanos", BigInteger, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    # What gateway processes have leased from the balance (`credit_leases`; migration 0007).
    Column("leased_nanos", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("held_nanos >= 0", name="ck_accounts_held_nonnegative"),
    CheckConstraint("status IN ('active', 'disabled')", name="ck_accounts_status"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),  # the non-secret lookup part of the token
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False),  # sha256 hex of the whole token
    Column("permissions", String(32), nullable=False),  # "run,read,edit" subset
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_api_tokens_account", "account_id"),
)

operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

gateways = Table(
    "gateways",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("config", Text, nullable=False),  # the gateway object's settings, as JSON
    Column("is_default", Boolean, nullable=False, server_default=false()),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column(
        "seq",
        Integer().with_variant(BigInteger, "postgresql"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("id", String(32), nullable=False, unique=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("balance_after_nanos", BigInteger, nullable=False),
    Column("note", String(500), nullable=False, server_default=""),
    # An idempotency key: the same (account, reference) is credited at most once.
    Column("reference", String(200), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # The model a `usage` entry was billed for, `provider/model` (migration 0004).
    Column("model", String(200), nullable=True),
    UniqueConstraint("account_id", "reference", name="uq_ledger_reference"),
    CheckConstraint(
        "kind IN ('grant', 'topup', 'auto_topup', 'usage', 'refund', 'adjustment')",
        name="ck_ledger_kind",
    ),
    Index("ix_ledger_account_seq", "account_id", "seq"),
    Index("ix_ledger_account_created", "account_id", "created_at"),
)

# Account-defined `custom-{slug}` providers (Cloudflare's custom providers). `headers` holds the
# extra upstream headers as a JSON object string, exactly as the API echoes it.
custom_providers = Table(
    "custom_providers",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("id", String(32), primary_key=True),
    Column("slug", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("base_url", String(2048), nullable=False),
    Column("description", Text, nullable=True),
    Column("link", String(2048), nullable=True),
    Column("enable", Boolean, nullable=False, server_default=false()),
    Column("beta", Boolean, nullable=False, server_default=false()),
    Column("curl_example", Text, nullable=True),
    Column("js_example", Text, nullable=True),
    Column("headers", Text, nullable=True),
    Column("position", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "slug", name="uq_custom_providers_slug"),
)
