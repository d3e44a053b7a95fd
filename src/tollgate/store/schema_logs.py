"""The request log table (migration 0005), on the one `schema.metadata`.

One row per logged data-plane request; `id` is the request's `cf-aig-log-id` (`ordered_id`, so
new rows land at the right edge of the indexes). The columns are Cloudflare's log fields, plus
what tollgate adds: `credential_source` (unified | byok | stored), `zdr`, `cost_estimated`.

- `cost_nanos` is the charged (or, for BYOK, the priced) cost in nano-dollars; the API shows
  dollars.
- `metadata` is the request's `cf-aig-metadata` as a compact JSON object string (orjson, no
  spaces), which the metadata filters rely on.
- `request_body` / `response_body` hold at most `[logs] body_max_bytes` of each body;
  `*_complete` is false when it was cut there. Both are NULL when the payload was not collected
  (`cf-aig-collect-log-payload: false`), with `payload_collected` false.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from tollgate.store.schema import UTCDateTime, metadata

request_logs = Table(
    "request_logs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("gateway_id", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("model_type", String(32), nullable=True),
    Column("path", String(2048), nullable=False),
    Column("request_type", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("success", Boolean, nullable=False),
    Column("cached", Boolean, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("tokens_in", Integer, nullable=True),
    Column("tokens_out", Integer, nullable=True),
    Column("cost_nanos", BigInteger, nullable=True),
    Column("cost_estimated", Boolean, nullable=False),
    Column("custom_cost", Boolean, nullable=False),
    Column("credential_source", String(16), nullable=True),
    Column("zdr", Boolean, nullable=False),
    Column("metadata", Text, nullable=True),
    Column("event_id", String(256), nullable=True),
    Column("step", Integer, nullable=True),
    Column("user_agent", String(500), nullable=True),
    Column("request_content_type", String(200), nullable=True),
    Column("response_content_type", String(200), nullable=True),
    Column("request_size", BigInteger, nullable=False),
    Column("response_size", BigInteger, nullable=False),
    Column("payload_collected", Boolean, nullable=False),
    Column("request_body", LargeBinary, nullable=True),
    Column("request_complete", Boolean, nullable=False),
    Column("response_body", LargeBinary, nullable=True),
    Column("response_complete", Boolean, nullable=False),
    Column("feedback", Integer, nullable=True),
    Column("score", Float, nullable=True),
    # Lists, counts and DELETE_OLDEST all walk one gateway's rows in time order.
    Index("ix_request_logs_gateway_created", "account_id", "gateway_id", "created_at", "id"),
)
