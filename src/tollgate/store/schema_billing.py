"""Tables for holds and spending limits (migration 0003), on the one `schema.metadata`.

- `holds`: one row per admitted request (`request_id` is unique). A hold is `open` until it is
  resolved exactly once, `settled` (charged `charged_nanos`) or `released` (charged nothing).
  `accounts.held_nanos` caches the sum of the account's open holds that draw on credits
  (`uses_credits`); a hold with `uses_credits` false only counts toward spending limits (BYOK with
  a known price). `buckets` is the JSON list of `[limit_key, bucket_start]` pairs the hold added
  its amount to; a resolution corrects exactly those. (Maintenance empties it on an old resolved
  hold it keeps while pruning its buckets: `tollgate.store.maintenance`.) `recovery_charge_nanos`
  is what the crash recovery sweep charges if the hold was forwarded and never settled. The
  result of the resolution (`charged_nanos`, `estimated`, `balance_after_nanos`,
  `ledger_entry_id`) is kept, so a repeated settle returns the first result.
- `spend_buckets`: spend counted toward a limit key, per bucket. `bucket_start` is in epoch
  seconds (UTC). A bucket's amount is the sum of its holds' current amounts: open ⇒ the held
  amount, settled ⇒ the charge, released ⇒ 0 (over the holds that still name it, once
  maintenance has pruned some: it only does so for buckets no limit can count any more).
- `account_spending_limits`: the account's own spending limit (at most one per account).
- `credit_leases` (migration 0007): credit one gateway process (`owner`) reserved from an
  account's balance and admits Unified Billing requests against in memory
  (`tollgate.billing.leases`). `accounts.leased_nanos` is the sum of the account's leases; a
  settlement takes its charge out of both. A lease whose owner died is resolved from the owner's
  journal by the next process to start.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    true,
)

from tollgate.store.schema import UTCDateTime, metadata

HOLD_STATES = ("open", "settled", "released")
LIMIT_DURATIONS = ("daily", "weekly", "monthly")
LIMIT_STRATEGIES = ("fixed", "sliding")

holds = Table(
    "holds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("request_id", String(200), nullable=False, unique=True),
    Column("gateway_id", String(64), nullable=True),
    Column("model", String(200), nullable=True),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("recovery_charge_nanos", BigInteger, nullable=False),
    Column("uses_credits", Boolean, nullable=False, server_default=true()),
    Column("buckets", Text, nullable=False, server_default="[]"),
    Column("state", String(16), nullable=False, server_default="open"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("forwarded_at", UTCDateTime, nullable=True),
    Column("resolved_at", UTCDateTime, nullable=True),
    Column("charged_nanos", BigInteger, nullable=True),
    Column("estimated", Boolean, nullable=True),
    Column("balance_after_nanos", BigInteger, nullable=True),
    Column("ledger_entry_id", String(32), nullable=True),
    CheckConstraint("state IN ('open', 'settled', 'released')", name="ck_holds_state"),
    CheckConstraint("amount_nanos >= 0", name="ck_holds_amount_nonnegative"),
    CheckConstraint(
        "recovery_charge_nanos >= 0 AND recovery_charge_nanos <= amount_nanos",
        name="ck_holds_recovery_charge",
    ),
    CheckConstraint("charged_nanos IS NULL OR charged_nanos >= 0", name="ck_holds_charged"),
    Index("ix_holds_state_expires", "state", "expires_at"),
    Index("ix_holds_account_state", "account_id", "state"),
)

spend_buckets = Table(
    "spend_buckets",
    metadata,
    Column("limit_key", String(512), primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True, autoincrement=False),
    Column("amount_nanos", BigInteger, nullable=False),
)

account_spending_limits = Table(
    "account_spending_limits",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("duration", String(16), nullable=False),
    Column("strategy", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    CheckConstraint("amount_nanos > 0", name="ck_account_limit_amount"),
    CheckConstraint("duration IN ('daily', 'weekly', 'monthly')", name="ck_account_limit_duration"),
    CheckConstraint("strategy IN ('fixed', 'sliding')", name="ck_account_limit_strategy"),
)

credit_leases = Table(
    "credit_leases",
    metadata,
    Column("id", String(100), primary_key=True),  # "{owner}:{account_id}"
    Column("owner", String(64), nullable=False, index=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    CheckConstraint("amount_nanos >= 0", name="ck_credit_leases_amount"),
)
