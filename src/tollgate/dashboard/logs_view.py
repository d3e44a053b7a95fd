"""How a request log reads on the Logs pages: the table's cells, the detail's facts, and the
stored request and response bodies. Pure: records in, words out (money through `usd`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from tollgate.dashboard.format import usd
from tollgate.store.logs import LogRecord

CREDENTIAL_SOURCES = {"unified": "Unified Billing", "byok": "BYOK", "stored": "Stored key"}
FEEDBACK_WORDS = {1: "Thumbs up", -1: "Thumbs down", 0: "Neutral (0)"}
NONE = "—"


def log_time(moment: datetime, *, precise: bool = False) -> str:
    """`2025-01-31 14:05:09` in UTC (with microseconds on the detail page)."""
    shown = moment.astimezone(UTC)
    return shown.strftime("%Y-%m-%d %H:%M:%S.%f" if precise else "%Y-%m-%d %H:%M:%S")


def duration_text(milliseconds: int) -> str:
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    return f"{milliseconds / 1000:.2f} s"


def status_text(record: LogRecord) -> str:
    """`Success 200`, `Error 400`, or `Error` when no response status was seen."""
    word = "Success" if record.success else "Error"
    return f"{word} {record.status_code}" if record.status_code is not None else word


def credential_words(source: str | None) -> str:
    return CREDENTIAL_SOURCES.get(source or "", source or NONE)


def cost_text(record: LogRecord) -> str:
    if record.cost_nanos is None:
        return NONE
    shown = usd(record.cost_nanos)
    return f"{shown} (estimated)" if record.cost_estimated else shown


def tokens_text(count: int | None) -> str:
    return f"{count:,}" if count is not None else NONE


def metadata_entries(metadata: str | None) -> list[tuple[str, str]]:
    """The log's `cf-aig-metadata` entries as (key, value) text; strings bare, numbers and
    booleans as JSON writes them. Text that is not a JSON object is shown whole."""
    if not metadata:
        return []
    try:
        parsed = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return [("(metadata)", metadata)]
    if not isinstance(parsed, dict):
        return [("(metadata)", metadata)]
    return [
        (str(key), value if isinstance(value, str) else orjson.dumps(value).decode())
        for key, value in parsed.items()
    ]


def feedback_words(feedback: int | None) -> str:
    return FEEDBACK_WORDS.get(feedback, str(feedback)) if feedback is not None else "None yet"


def score_text(score: float | None) -> str:
    if score is None:
        return "None yet"
    return f"{score:g}"


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of the Logs table."""

    id: str
    url: str
    time: str
    provider: str
    model: str
    success: bool
    status: str
    tokens_in: str
    tokens_out: str
    cost: str
    cached: str
    duration: str
    credentials: str
    metadata: list[tuple[str, str]]


def log_row(record: LogRecord, url: str) -> LogRow:
    return LogRow(
        id=record.id,
        url=url,
        time=log_time(record.created_at),
        provider=record.provider,
        model=record.model,
        success=record.success,
        status=status_text(record),
        tokens_in=tokens_text(record.tokens_in),
        tokens_out=tokens_text(record.tokens_out),
        cost=cost_text(record),
        cached="Yes" if record.cached else "No",
        duration=duration_text(record.duration_ms),
        credentials=credential_words(record.credential_source),
        metadata=metadata_entries(record.metadata),
    )


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def _or_none(value: object) -> str:
    return NONE if value is None or value == "" else str(value)


def detail_facts(record: LogRecord) -> list[tuple[str, str]]:
    """Every field of the log, in reading order, as (label, text)."""
    return [
        ("Log id", record.id),
        ("Time (UTC)", log_time(record.created_at, precise=True)),
        ("Gateway", record.gateway_id),
        ("Status", status_text(record)),
        ("Provider", record.provider),
        ("Model", record.model),
        ("Model type", _or_none(record.model_type)),
        ("Path", record.path),
        ("Request type", record.request_type),
        ("Tokens in", tokens_text(record.tokens_in)),
        ("Tokens out", tokens_text(record.tokens_out)),
        ("Cost", cost_text(record)),
        ("Custom cost", _yes_no(record.custom_cost)),
        ("Credential source", credential_words(record.credential_source)),
        ("Cached", _yes_no(record.cached)),
        ("Duration", duration_text(record.duration_ms)),
        ("Zero data retention", _yes_no(record.zdr)),
        ("Event id", _or_none(record.event_id)),
        ("Step", _or_none(record.step)),
        ("User agent", _or_none(record.user_agent)),
        ("Request content type", _or_none(record.request_content_type)),
        ("Response content type", _or_none(record.response_content_type)),
        ("Request size", f"{record.request_size:,} bytes"),
        ("Response size", f"{record.response_size:,} bytes"),
        ("Payload kept", _yes_no(record.payload_collected)),
    ]


@dataclass(frozen=True, slots=True)
class BodyView:
    """A stored body as the detail page shows it: the text (pretty JSON when it parses), and a
    note when it was cut at the cap or not kept at all."""

    text: str | None
    is_json: bool
    note: str | None


def body_view(body: bytes | None, complete: bool, size: int, cap: int) -> BodyView:
    if body is None:
        return BodyView(
            None,
            False,
            "Not collected: the request asked to keep the log without its bodies "
            "(cf-aig-collect-log-payload: false).",
        )
    note = None
    if not complete:
        note = (
            f"Truncated: only the first {len(body):,} of {size:,} bytes were kept (the log "
            f"keeps at most {cap:,} bytes of each body, [logs] body_max_bytes)."
        )
    if not body:
        return BodyView("", False, note or "Empty: this body had no content.")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return BodyView(body.decode("utf-8", errors="replace"), False, note)
    return BodyView(orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode(), True, note)
