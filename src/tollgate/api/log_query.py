"""The Logs API's query strings and edit bodies, parsed into store values or refused with a 400.

Pure: no I/O. Filters arrive in one of three forms:
- one after the other, `filters.key=model&filters.operator=eq&filters.value=a&filters.value=b
  &filters.key=...`: each `filters.key` starts a filter, the operator and values after it are
  its own (what the SDK serializes, and what curl users write);
- grouped, every `filters.key`, then every `filters.operator`, then every `filters.value`: what
  the SDK actually sends with several filters, since its HTTP client (httpx) groups repeated
  names. Each filter then needs exactly one value, or which is whose is ambiguous (400);
- `filters=<JSON array of {key, operator, value}>`, for anything else.
A filter whose values were all null arrives with no value at all, and means "is null".

Decisions where Cloudflare's documents are silent:
- Every unknown query parameter, filter key or operator is a 400 naming it, as is an operator
  that makes no sense for the key (`contains` on a number, `lt` on a boolean) or `lt`/`gt` with
  other than one value. `authentication` and `dlp_action`, keys the SDK knows, are refused as
  not supported: tollgate records neither.
- `cost` values and the `min_cost`/`max_cost` bounds are in dollars, like the log's `cost`.
  `min_*`/`max_*` and `start_date`/`end_date` are inclusive.
- `feedback=1` is thumbs up; `feedback=0` matches logs whose feedback is -1 or 0.
- `wholesale` matches Unified Billing requests; `compatibilityMode` the Unified API's (`/compat`
  and the REST surface).
- `metadata.key` / `metadata.value` match any entry's key / value (`eq`, `neq`; `contains`
  searches the metadata's text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from tollgate import money
from tollgate.errors import InvalidRequest
from tollgate.features.metadata import METADATA_KEY_MAX_CHARS, METADATA_MAX_KEYS
from tollgate.store.logs import LogFilter, LogQuery

STRING_KEYS = frozenset(
    {
        "id",
        "request_content_type",
        "response_content_type",
        "request_type",
        "provider",
        "model",
        "model_type",
        "event_id",
        "user_agent",
    }
)
BOOLEAN_KEYS = frozenset({"success", "cached", "wholesale", "compatibilityMode"})
NUMBER_KEYS = frozenset({"cost", "tokens", "tokens_in", "tokens_out", "duration", "feedback"})
DATE_KEYS = frozenset({"created_at"})
METADATA_KEYS = frozenset({"metadata.key", "metadata.value"})
UNSUPPORTED_KEYS = frozenset({"authentication", "dlp_action"})
OPERATORS = ("eq", "neq", "contains", "lt", "gt")
_ALLOWED: dict[frozenset[str], tuple[str, ...]] = {
    STRING_KEYS: ("eq", "neq", "contains"),
    BOOLEAN_KEYS: ("eq", "neq"),
    NUMBER_KEYS: ("eq", "neq", "lt", "gt"),
    DATE_KEYS: ("eq", "neq", "lt", "gt"),
    METADATA_KEYS: ("eq", "neq", "contains"),
}
LIST_ORDERS = ("created_at", "provider", "model", "model_type", "success", "cached")
DELETE_ORDERS = (*LIST_ORDERS, "cost", "tokens_in", "tokens_out", "duration", "feedback")
_RANGES = {
    "cost": "cost",
    "duration": "duration",
    "tokens_in": "tokens_in",
    "tokens_out": "tokens_out",
    "total_tokens": "tokens",
}
_EQUALS = ("model", "model_type", "provider", "request_content_type", "response_content_type")
DELETE_LIMIT_MAX = 10_000_000
SCORE_MAX = 1e9


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", code="invalid_field", param=param)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= 60 else text[:57] + "..."


# --- typed values ---------------------------------------------------------------------------


def parse_boolean(param: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(param, f"expected true or false, got '{_shown(value)}'")


def parse_number(param: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(param, f"expected a number, got '{_shown(value)}'")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _bad(param, f"expected a number, got '{_shown(value)}'") from None
    if not number.is_finite() or abs(number) > Decimal(10) ** 15:
        raise _bad(param, f"expected a finite number, got '{_shown(value)}'")
    return number


def parse_date(param: str, value: object) -> datetime:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    raise _bad(param, f"expected an ISO 8601 date-time, got '{_shown(value)}'")


def _typed(key: str, param: str, value: object) -> Any:
    """A filter value as the store compares it (cost in nano-dollars)."""
    if value is None:
        return None
    if key in BOOLEAN_KEYS:
        return parse_boolean(param, value)
    if key in NUMBER_KEYS:
        number = parse_number(param, value)
        if key == "cost":
            return money.from_dollars(number)
        return int(number) if number == number.to_integral_value() else float(number)
    if key in DATE_KEYS:
        return parse_date(param, value)
    if isinstance(value, (dict, list)):
        raise _bad(param, f"expected a string, number or boolean, got '{_shown(value)}'")
    return value if isinstance(value, str) else _shown(value)


def make_filter(key: object, operator: object, values: Sequence[object]) -> LogFilter:
    """One filter, checked: a known key, an operator that fits it, values of its type."""
    if not isinstance(key, str) or key in UNSUPPORTED_KEYS:
        raise _bad(
            "filters.key",
            f"'{_shown(key)}' is not supported by tollgate; filter on one of "
            f"{', '.join(sorted(STRING_KEYS | BOOLEAN_KEYS | NUMBER_KEYS | DATE_KEYS))}, "
            "metadata.key or metadata.value",
        )
    group = next((keys for keys in _ALLOWED if key in keys), None)
    if group is None:
        raise _bad(
            "filters.key",
            f"unknown filter key '{_shown(key)}'; known: "
            f"{', '.join(sorted(STRING_KEYS | BOOLEAN_KEYS | NUMBER_KEYS | DATE_KEYS))}, "
            "metadata.key, metadata.value",
        )
    if operator not in OPERATORS:
        raise _bad(
            "filters.operator",
            f"unknown operator '{_shown(operator)}' for {key}; use one of {', '.join(OPERATORS)}",
        )
    assert isinstance(operator, str)
    if operator not in _ALLOWED[group]:
        raise _bad(
            "filters.operator",
            f"'{operator}' does not apply to {key}; use one of {', '.join(_ALLOWED[group])}",
        )
    typed = tuple(_typed(key, f"filters.value ({key})", v) for v in (values or [None]))
    if operator in ("lt", "gt", "contains") and None in typed:
        raise _bad("filters.value", f"'{operator}' on {key} needs a value, not null")
    if operator in ("lt", "gt") and len(typed) != 1:
        raise _bad("filters.value", f"'{operator}' on {key} takes exactly one value")
    return LogFilter(key, operator, typed)


# --- the query string -----------------------------------------------------------------------


def parse_filters(pairs: Sequence[tuple[str, str]]) -> list[LogFilter]:
    """The `filters.*` pairs (see the module docstring), or one JSON `filters`."""
    filters: list[LogFilter] = []
    dotted: list[tuple[str, str]] = []
    for name, value in pairs:
        if name == "filters":
            filters += _json_filters(value)
        elif name.startswith("filters."):
            field = name.removeprefix("filters.")
            if field not in ("key", "operator", "value"):
                raise _bad(name, "a filter has key, operator and value")
            dotted.append((field, value))
    fields = [field for field, _ in dotted]
    keys = fields.count("key")
    first_other = next((i for i, f in enumerate(fields) if f != "key"), len(fields))
    if keys > 1 and "key" not in fields[first_other:]:
        return filters + _grouped_filters(dotted, keys)
    return filters + _sequential_filters(dotted)


def _sequential_filters(dotted: list[tuple[str, str]]) -> list[LogFilter]:
    """`key, operator, value...` per filter, one after the other."""
    filters: list[LogFilter] = []
    current: dict[str, Any] | None = None
    for field, value in dotted:
        if field == "key":
            if current is not None:
                filters.append(make_filter(current["key"], current.get("op"), current["values"]))
            current = {"key": value, "values": []}
        elif current is None:
            raise _bad(f"filters.{field}", "each filter starts with filters.key")
        elif field == "operator":
            current["op"] = value
        else:
            current["values"].append(value)
    if current is not None:
        filters.append(make_filter(current["key"], current.get("op"), current["values"]))
    return filters


def _grouped_filters(dotted: list[tuple[str, str]], count: int) -> list[LogFilter]:
    """Every key, then every operator, then every value: the order the SDK's HTTP client
    (httpx) puts repeated names in. Unambiguous only with one operator and one value per
    filter; otherwise the client must send `filters` as JSON."""
    keys = [v for f, v in dotted if f == "key"]
    operators = [v for f, v in dotted if f == "operator"]
    values = [v for f, v in dotted if f == "value"]
    if len(operators) != count or len(values) != count:
        raise _bad(
            "filters",
            f"{count} filters arrived as {len(operators)} operators and {len(values)} values, "
            "so which value belongs to which filter is ambiguous. With several filters give "
            "each exactly one value, or send filters=<JSON array of {key, operator, value}>",
        )
    return [make_filter(k, o, [v]) for k, o, v in zip(keys, operators, values, strict=True)]


def _json_filters(text: str) -> list[LogFilter]:
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _bad("filters", "expected a JSON array of {key, operator, value} objects")
    found = []
    for item in items:
        unknown = sorted(set(item) - {"key", "operator", "value"})
        if unknown:
            raise _bad("filters", f"unknown filter field '{_shown(unknown[0])}'")
        values = item.get("value")
        values = values if isinstance(values, list) else [values]
        found.append(make_filter(item.get("key"), item.get("operator"), values))
    return found


def _order(pairs: dict[str, str], allowed: Sequence[str]) -> tuple[str, bool]:
    order_by = pairs.get("order_by") or "created_at"
    if order_by not in allowed:
        raise _bad("order_by", f"expected one of {', '.join(allowed)}, got '{_shown(order_by)}'")
    direction = pairs.get("order_by_direction") or pairs.get("direction") or "desc"
    if direction not in ("asc", "desc"):
        raise _bad("order_by_direction", f"expected asc or desc, got '{_shown(direction)}'")
    return order_by, direction == "desc"


_LIST_PARAMS = frozenset(
    {"page", "per_page", "search", "order_by", "order_by_direction", "direction", "meta_info"}
    | {"cached", "success", "feedback", "start_date", "end_date", *_EQUALS}
    | {f"{side}_{name}" for side in ("min", "max") for name in _RANGES}
)


def _split(pairs: Sequence[tuple[str, str]], known: frozenset[str]) -> dict[str, str]:
    """The non-filter parameters (each once), refusing unknown ones."""
    single: dict[str, str] = {}
    for name, value in pairs:
        if name == "filters" or name.startswith("filters."):
            continue
        if name not in known:
            raise _bad(name, f"unknown query parameter; known: {', '.join(sorted(known))}")
        if name in single:
            raise _bad(name, "given more than once")
        single[name] = value
    return single


def parse_list_query(pairs: Sequence[tuple[str, str]]) -> LogQuery:
    """GET .../logs: every parameter of the SDK's `logs.list`, as one `LogQuery`."""
    params = _split(pairs, _LIST_PARAMS)
    filters = parse_filters(pairs) + _shortcut_filters(params)
    if "meta_info" in params:
        parse_boolean("meta_info", params["meta_info"])  # the stats are always returned
    order_by, descending = _order(params, LIST_ORDERS)
    search = params.get("search") or None
    return LogQuery(tuple(filters), search, order_by, descending)


def _shortcut_filters(params: dict[str, str]) -> list[LogFilter]:
    """The list's named parameters (`cached`, `min_cost`, `start_date`...) as filters."""
    filters: list[LogFilter] = []
    for name in ("cached", "success"):
        if name in params:
            filters.append(LogFilter(name, "eq", (parse_boolean(name, params[name]),)))
    if "feedback" in params:
        value = params["feedback"]
        if value not in ("0", "1"):
            raise _bad("feedback", f"expected 0 or 1, got '{_shown(value)}'")
        filters.append(LogFilter("feedback", "eq", (1,) if value == "1" else (-1, 0)))
    for name, op in (("start_date", "gte"), ("end_date", "lte")):
        if name in params:
            filters.append(LogFilter("created_at", op, (parse_date(name, params[name]),)))
    filters += [LogFilter(name, "eq", (params[name],)) for name in _EQUALS if name in params]
    for range_name, key in _RANGES.items():
        for side, op in (("min", "gte"), ("max", "lte")):
            name = f"{side}_{range_name}"
            if name in params:
                filters.append(LogFilter(key, op, (_typed(key, name, params[name]),)))
    return filters


def parse_delete_query(pairs: Sequence[tuple[str, str]]) -> tuple[LogQuery, int | None]:
    """DELETE .../logs: `filters`, `limit`, `order_by`, `order_by_direction`."""
    params = _split(pairs, frozenset({"limit", "order_by", "order_by_direction"}))
    limit: int | None = None
    if "limit" in params:
        raw = params["limit"]
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= DELETE_LIMIT_MAX:
            raise _bad("limit", f"expected an integer from 1 to {DELETE_LIMIT_MAX}, got '{raw}'")
        limit = int(raw)
    order_by, descending = _order(params, DELETE_ORDERS)
    return LogQuery(tuple(parse_filters(pairs)), None, order_by, descending), limit


# --- the edit body --------------------------------------------------------------------------


def parse_log_edit(body: object) -> dict[str, Any]:
    """PATCH .../logs/{id}: `feedback` (-1, 0, 1 or null), `score` (a number or null),
    `metadata` (a flat object of at most 5 entries, or null). At least one of them."""
    if not isinstance(body, dict):
        raise _bad("body", "expected a JSON object with feedback, score and/or metadata")
    unknown = sorted(set(body) - {"feedback", "score", "metadata"})
    if unknown:
        raise _bad(unknown[0], "unknown field; a log's feedback, score and metadata may change")
    if not body:
        raise _bad("body", "nothing to change: send feedback, score and/or metadata")
    changes: dict[str, Any] = {}
    if "feedback" in body:
        feedback = body["feedback"]
        if feedback is not None and (
            isinstance(feedback, bool)
            or not isinstance(feedback, (int, float))
            or feedback not in (-1, 0, 1)
        ):
            raise _bad("feedback", f"expected -1, 0, 1 or null, got {_shown(feedback)}")
        changes["feedback"] = int(feedback) if feedback is not None else None
    if "score" in body:
        score = body["score"]
        if score is not None and (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
            or abs(score) > SCORE_MAX
        ):
            raise _bad("score", f"expected a finite number or null, got {_shown(score)}")
        changes["score"] = float(score) if score is not None else None
    if "metadata" in body:
        changes["metadata"] = _edited_metadata(body["metadata"])
    return changes


def _edited_metadata(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _bad("metadata", f"expected a flat JSON object or null, got {_shown(metadata)}")
    if len(metadata) > METADATA_MAX_KEYS:
        raise _bad("metadata", f"at most {METADATA_MAX_KEYS} entries, got {len(metadata)}")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise _bad("metadata", f"keys are at most {METADATA_KEY_MAX_CHARS} characters")
        if not isinstance(value, (str, int, float, bool)):
            raise _bad(
                f"metadata.{key}", f"expected a string, number or boolean, got {_shown(value)}"
            )
    return orjson.dumps(metadata).decode() if metadata else None
