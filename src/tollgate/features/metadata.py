"""`cf-aig-metadata` and `cf-aig-event-id`: what a client tags a request with.

Metadata is a flat JSON object of at most `METADATA_MAX_KEYS` entries whose values are strings,
numbers or booleans. It lands in `RequestContext.metadata`, where the meter's spend rules
(`billing/limits.py`: filter or partition by a key) and the request's log read it.

- Keys starting `cf.` are reserved (Cloudflare injects `cf.user_id`): they are not saved.
- A value that is not flat (an object, an array, or null) is ignored, with a warning logged
  naming the key, and the flat entries are kept (as Cloudflare's policies do).
- Anything else wrong is a 400 naming the header, before anything is stored or sent: invalid JSON,
  not an object, more than `METADATA_MAX_KEYS` flat entries, an over-long key or string. Dropping
  the extras instead (as Cloudflare does) would silently lose the key a spend rule filters on.

The event id is an opaque client string recorded on the log; longer than `EVENT_ID_MAX_CHARS`
is a 400.
"""

from __future__ import annotations

import logging

import orjson

from tollgate.features.headers import header, invalid_header

METADATA_HEADER = b"cf-aig-metadata"
EVENT_ID_HEADER = b"cf-aig-event-id"
METADATA_MAX_KEYS = 5
METADATA_KEY_MAX_CHARS = 256
METADATA_STRING_MAX_CHARS = 1024
EVENT_ID_MAX_CHARS = 256
RESERVED_PREFIX = "cf."

MetadataValue = str | int | float | bool

log = logging.getLogger(__name__)


def read_metadata(headers: list[tuple[bytes, bytes]]) -> dict[str, MetadataValue]:
    """The request's flat metadata entries; empty when the header is absent."""
    raw = header(headers, METADATA_HEADER)
    if raw is None:
        return {}
    try:
        parsed = orjson.loads(raw.encode("latin-1"))  # the header's bytes, read as UTF-8
    except orjson.JSONDecodeError:
        raise invalid_header(METADATA_HEADER, "a JSON object", raw) from None
    if not isinstance(parsed, dict):
        raise invalid_header(METADATA_HEADER, "a JSON object", raw)
    kept: dict[str, MetadataValue] = {}
    for key, value in parsed.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise invalid_header(
                METADATA_HEADER, f"keys of at most {METADATA_KEY_MAX_CHARS} characters", key
            )
        if key.startswith(RESERVED_PREFIX):
            continue  # reserved for the gateway's own entries: never saved from a client
        if not isinstance(value, str | int | float | bool):
            log.warning(
                "cf-aig-metadata entry %r ignored: its value is %s, not a string, number or "
                "boolean",
                key,
                _json_kind(value),
                extra={"metadata_key": key, "reason": "not_flat"},
            )
            continue
        if isinstance(value, str) and len(value) > METADATA_STRING_MAX_CHARS:
            raise invalid_header(
                METADATA_HEADER,
                f"string values of at most {METADATA_STRING_MAX_CHARS} characters",
                f"{len(value)} characters for '{key}'",
            )
        kept[key] = value
    if len(kept) > METADATA_MAX_KEYS:
        raise invalid_header(
            METADATA_HEADER,
            f"at most {METADATA_MAX_KEYS} entries",
            f"{len(kept)} entries ({', '.join(kept)})",
        )
    return kept


def read_event_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The client's event id for the log; None when absent or empty."""
    value = header(headers, EVENT_ID_HEADER)
    if not value:
        return None
    if len(value) > EVENT_ID_MAX_CHARS:
        raise invalid_header(
            EVENT_ID_HEADER, f"at most {EVENT_ID_MAX_CHARS} characters", f"{len(value)} characters"
        )
    return value


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return "an array" if isinstance(value, list) else "an object"
