"""Tables for payments: payment profiles, top-ups, auto top-up configs, processed webhook events.

They live on the one `tollgate.store.schema.metadata`. Amounts are integer **cents** here, because
they are what a card is charged and what the billing API speaks; the ledger entry a top-up credits
is in nano-dollars (`tollgate.money.from_cents`).

- `payment_profiles`: one row per account that has a payment-provider customer and/or a saved
  payment method. Only the brand, last four digits and expiry are kept, never a card number.
- `topups`: one row per top-up attempt, manual or auto. `(account_id, idempotency_key)` is unique,
  so a client's idempotency key claims exactly one row (INSERT ... ON CONFLICT DO NOTHING). The
  credit itself is the ledger entry whose reference is the row's `payment_intent_id`: the ledger's
  unique `(account_id, reference)` makes it happen at most once, whoever (request, status poll,
  webhook, recovery) gets there first.
- `auto_topup_configs`: the account's auto top-up settings plus its state machine: `armed` (a
  charge may start on the next crossing), the in-flight marker (`in_flight_topup_id`), the failure
  record (`error`, `last_failed_at`, `consecutive_failures`, `disabled_reason`), and a back-off
  (`next_attempt_at`). Every transition is one guarded UPDATE.
- `payment_events`: webhook event ids already processed (dedupe on event id).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    true,
)

from tollgate.store.schema import UTCDateTime, metadata

TOPUP_STATUSES = ("creating", "pending", "requires_action", "succeeded", "failed")

payment_profiles = Table(
    "payment_profiles",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("customer_id", String(255), nullable=True),
    Column("payment_method_id", String(255), nullable=True),
    Column("brand", String(32), nullable=True),
    Column("last4", String(4), nullable=True),
    Column("exp_month", Integer, nullable=True),
    Column("exp_year", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
)

topups = Table(
    "topups",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("provider", String(16), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),  # credited
    Column("fee_cents", BigInteger, nullable=False),
    Column("charge_cents", BigInteger, nullable=False),  # charged = amount + fee
    Column("payment_method_id", String(255), nullable=True),
    Column("brand", String(32), nullable=True),
    Column("last4", String(4), nullable=True),
    Column("payment_intent_id", String(255), nullable=True, unique=True),
    Column("client_secret", String(500), nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("error_message", String(500), nullable=True),
    Column("ledger_entry_id", String(32), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    UniqueConstraint("account_id", "idempotency_key", name="uq_topups_idempotency_key"),
    CheckConstraint("kind IN ('manual', 'auto')", name="ck_topups_kind"),
    CheckConstraint(
        "status IN ('creating', 'pending', 'requires_action', 'succeeded', 'failed')",
        name="ck_topups_status",
    ),
    CheckConstraint("amount_cents > 0 AND fee_cents >= 0", name="ck_topups_amounts"),
    Index("ix_topups_account_created", "account_id", "created_at"),
)

auto_topup_configs = Table(
    "auto_topup_configs",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("threshold_cents", BigInteger, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("monthly_cap_cents", BigInteger, nullable=True),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("armed", Boolean, nullable=False, server_default=true()),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("error", String(500), nullable=True),
    Column("last_failed_at", UTCDateTime, nullable=True),
    Column("disabled_reason", String(500), nullable=True),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("in_flight_topup_id", String(32), nullable=True),
    Column("in_flight_since", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
)

payment_events = Table(
    "payment_events",
    metadata,
    Column("id", String(255), primary_key=True),  # the provider's event id (evt_...)
    Column("type", String(100), nullable=False),
    Column("payment_intent_id", String(255), nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
)
