"""The Logs page's filter form (a GET query string), checked field by field and turned into the
Logs API's own query, so a dashboard filter means exactly what the API's does.

Pure: no I/O. The fields, as the form names them:

    gateway    the gateway whose logs are listed (checked against the account by the page)
    provider   `provider` (equal to)                 model     `model` (equal to)
    status     success | error -> `success=true|false`
    min_cost   `min_cost` (dollars, inclusive)       max_cost  `max_cost` (dollars, inclusive)
    from       `start_date` (YYYY-MM-DD, from the start of that UTC day)
    to         `end_date` (YYYY-MM-DD, to the end of that UTC day)
    metadata   key=value: logs whose `cf-aig-metadata` has that entry (see `metadata_filters`)
    per_page   1 to 50 (the form offers 25 and 50)    page      from 1

`parse_log_filters` refuses what it cannot use with one plain message per field (`FilterErrors`),
before any query runs: a cost that is not a number or is negative, a minimum above the maximum,
a date that is not a date or a range that ends before it starts, a metadata filter without `=`.
What is left goes through `tollgate.api.log_query.parse_list_query`, the Logs API's parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import TypeVar
from urllib.parse import urlencode

import orjson

from tollgate.api.log_query import parse_list_query
from tollgate.errors import InvalidRequest
from tollgate.features.metadata import METADATA_KEY_MAX_CHARS, METADATA_STRING_MAX_CHARS
from tollgate.store.logs import LogQuery

FIELDS = (
    "gateway",
    "provider",
    "model",
    "status",
    "min_cost",
    "max_cost",
    "from",
    "to",
    "metadata",
    "per_page",
    "page",
)
STATUSES = {"success": "true", "error": "false"}
PER_PAGE_CHOICES = (25, 50)
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 50  # the Logs API's own maximum
MAX_PAGE = 10**9
T = TypeVar("T")
_FILTERING = ("provider", "model", "status", "min_cost", "max_cost", "from", "to", "metadata")


class FilterErrors(ValueError):
    """One message per form field that cannot be used; shown next to that field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ParsedFilters:
    """A checked filter form: the store query, the same query as the Logs API's parameters,
    and the page asked for."""

    query: LogQuery
    api_params: tuple[tuple[str, str], ...]
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def filtering(self) -> bool:
        """Whether anything narrows the list (beyond the gateway and the page)."""
        return bool(self.api_params)


def read_filter_form(params: Mapping[str, str]) -> dict[str, str]:
    """The form's known fields, trimmed; unknown parameters are ignored."""
    return {name: params[name].strip() for name in FIELDS if params.get(name, "").strip()}


def parse_log_filters(form: Mapping[str, str]) -> ParsedFilters:
    """The filter form as a `LogQuery` (through the Logs API's parser) and a page, or
    `FilterErrors` naming every field that is wrong."""
    errors: dict[str, str] = {}
    params = [(name, form[name]) for name in ("provider", "model") if form.get(name)]
    success = _checked(errors, "status", form, parse_status)
    if success is not None:
        params.append(("success", success))
    params += _cost_params(form, errors) + _date_params(form, errors)
    entry = _checked(errors, "metadata", form, parse_metadata_entry)
    if entry is not None:
        params.append(("filters", orjson.dumps(metadata_filters(*entry)).decode()))
    per_page = _checked(
        errors, "per_page", form, lambda raw: parse_count(raw, "Logs per page", MAX_PER_PAGE)
    )
    page = _checked(errors, "page", form, lambda raw: parse_count(raw, "The page", MAX_PAGE))
    if errors:
        raise FilterErrors(errors)
    try:
        query = parse_list_query(params)
    except InvalidRequest as exc:  # not expected after the checks above; said plainly if so
        raise FilterErrors({"form": f"These filters cannot be used: {exc.message}."}) from None
    return ParsedFilters(query, tuple(params), page or 1, per_page or DEFAULT_PER_PAGE)


def _cost_params(form: Mapping[str, str], errors: dict[str, str]) -> list[tuple[str, str]]:
    """`min_cost` / `max_cost` in dollars, as the API takes them."""
    low = _checked(errors, "min_cost", form, lambda raw: parse_cost(raw, "The minimum cost"))
    high = _checked(errors, "max_cost", form, lambda raw: parse_cost(raw, "The maximum cost"))
    if low is not None and high is not None and low > high:
        errors["max_cost"] = (
            f"The maximum cost ({form['max_cost']}) is below the minimum ({form['min_cost']}). "
            "Enter a maximum at least as large as the minimum, or leave one of them empty."
        )
        return []
    bounds = (("min_cost", low), ("max_cost", high))
    return [(name, format(bound, "f")) for name, bound in bounds if bound is not None]


def _date_params(form: Mapping[str, str], errors: dict[str, str]) -> list[tuple[str, str]]:
    """`start_date` / `end_date`: whole UTC days, both included."""
    start = _checked(errors, "from", form, lambda raw: parse_day(raw, "The start date"))
    end = _checked(errors, "to", form, lambda raw: parse_day(raw, "The end date"))
    if start is not None and end is not None and start > end:
        errors["to"] = (
            f"The end date ({end.isoformat()}) is before the start date ({start.isoformat()}). "
            "Choose an end date on or after the start date."
        )
        return []
    params = []
    if start is not None:
        params.append(("start_date", datetime.combine(start, time.min, UTC).isoformat()))
    if end is not None:
        params.append(("end_date", datetime.combine(end, time.max, UTC).isoformat()))
    return params


def _checked(
    errors: dict[str, str], name: str, form: Mapping[str, str], parse: Callable[[str], T]
) -> T | None:
    """`parse(form[name])`, or None when the field is empty or wrong (its message recorded)."""
    raw = form.get(name, "")
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        errors[name] = str(exc)
        return None


def parse_status(raw: str) -> str:
    """`success` or `error`, as the API's `success=true|false`."""
    if raw not in STATUSES:
        raise ValueError("Choose a status: any, success or error.")
    return STATUSES[raw]


def parse_cost(raw: str, what: str) -> Decimal:
    """A cost bound in dollars (`0.002`, `$1.50`): any number of decimals, not negative."""
    text = raw.strip().replace(",", "").removeprefix("$").strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or abs(amount) > Decimal(10) ** 12:
        raise ValueError(f"{what} must be a number of dollars, like 0.01 or 2.50.")
    if amount < 0:
        raise ValueError(f"{what} cannot be negative. Enter 0 or more dollars, like 0.01.")
    return amount


def parse_day(raw: str, what: str) -> date:
    """A UTC calendar day written YYYY-MM-DD (what a date input sends)."""
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{what} must be a date written YYYY-MM-DD, like 2025-01-31.") from None


def parse_count(raw: str, what: str, maximum: int) -> int:
    """A whole number from 1 to `maximum`."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not 1 <= int(text) <= maximum:
        raise ValueError(f"{what} must be a whole number from 1 to {maximum:,}.")
    return int(text)


def parse_metadata_entry(raw: str) -> tuple[str, str]:
    """`key=value` (split at the first `=`; spaces around either side are dropped)."""
    key, equals, value = raw.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        raise ValueError(
            "Write the metadata filter as key=value, like user=alice: the key and the value "
            "of one cf-aig-metadata entry."
        )
    if len(key) > METADATA_KEY_MAX_CHARS or len(value) > METADATA_STRING_MAX_CHARS:
        raise ValueError(
            f"Metadata keys have at most {METADATA_KEY_MAX_CHARS} characters and values at "
            f"most {METADATA_STRING_MAX_CHARS}; shorten the filter."
        )
    return key, value


def metadata_filters(key: str, value: str) -> list[dict[str, object]]:
    """`key=value` in the Logs API's filter vocabulary: some entry's key is `key`, some entry's
    value is `value` (the API's own `metadata.key` / `metadata.value` equality, so a typed `5`
    or `true` also matches the number or boolean), and the stored metadata text (compact JSON,
    see `store/schema_logs.py`) holds that very entry, `"key":value` followed by `,` or `}`,
    so a log with the key on one entry and the value on another does not match."""
    entry = orjson.dumps(key).decode() + ":"
    endings = (",", "}")
    return [
        {"key": "metadata.key", "operator": "eq", "value": key},
        {"key": "metadata.value", "operator": "eq", "value": value},
        {
            "key": "metadata.value",
            "operator": "contains",
            "value": [entry + shape + end for shape in _encodings(value) for end in endings],
        },
    ]


def _encodings(value: str) -> list[str]:
    """How a typed value can appear in the stored JSON: as a string, and as the number or
    boolean it spells (the same readings as the store's `metadata.value` equality)."""
    shapes = [orjson.dumps(value).decode()]
    if value.lower() in ("true", "false"):
        shapes.append(value.lower())
    else:
        try:
            number = float(value)
        except ValueError:
            return shapes
        if number == number and abs(number) != float("inf"):
            shapes.append(orjson.dumps(int(number) if number.is_integer() else number).decode())
    return shapes


def filter_query_string(form: Mapping[str, str], **changes: str | int | None) -> str:
    """The list's query string for links (paging, a gateway): the form's non-empty fields,
    with `changes` applied (None drops a field)."""
    values: dict[str, str] = {name: form[name] for name in FIELDS if form.get(name)}
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = str(value)
    return urlencode(values)


def is_filtering(form: Mapping[str, str]) -> bool:
    """Whether the form narrows the list at all (for the empty state's wording)."""
    return any(form.get(name) for name in _FILTERING)
