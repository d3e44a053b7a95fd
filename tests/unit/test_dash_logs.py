"""The Logs page's pure parts: the filter form read into the Logs API's own query, its refusals,
and how a log's cells and bodies read."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tollgate.api.log_query import parse_list_query
from tollgate.dashboard.logs import parse_score
from tollgate.dashboard.logs_filters import (
    FilterErrors,
    filter_query_string,
    is_filtering,
    metadata_filters,
    parse_cost,
    parse_log_filters,
    read_filter_form,
)
from tollgate.dashboard.logs_view import body_view, duration_text, log_row, metadata_entries
from tollgate.store.logs import LogFilter, LogRecord


def _filters(**form: str) -> set[LogFilter]:
    return set(parse_log_filters(form).query.filters)


def test_an_empty_form_lists_everything_on_the_first_page_of_25() -> None:
    parsed = parse_log_filters({})
    assert parsed.query.filters == () and not parsed.filtering
    assert (parsed.page, parsed.per_page, parsed.offset) == (1, 25, 0)
    assert (parsed.query.order_by, parsed.query.descending) == ("created_at", True)


def test_each_field_means_what_the_logs_api_parameter_means() -> None:
    form = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "status": "error",
        "min_cost": "0.001",
        "max_cost": "$1.50",
        "from": "2025-01-02",
        "to": "2025-01-31",
    }
    api = parse_list_query(
        [
            ("provider", "openai"),
            ("model", "gpt-4o-mini"),
            ("success", "false"),
            ("min_cost", "0.001"),
            ("max_cost", "1.50"),
            ("start_date", "2025-01-02T00:00:00+00:00"),
            ("end_date", "2025-01-31T23:59:59.999999+00:00"),
        ]
    )
    assert _filters(**form) == set(api.filters)
    assert LogFilter("cost", "gte", (1_000_000,)) in api.filters  # dollars become nanos


def test_the_date_range_covers_whole_utc_days() -> None:
    found = {
        f.operator: f.values[0] for f in _filters(**{"from": "2025-03-01", "to": "2025-03-01"})
    }
    assert found == {
        "gte": datetime(2025, 3, 1, tzinfo=UTC),
        "lte": datetime(2025, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC),
    }


def test_a_metadata_entry_is_the_apis_key_and_value_filters_on_one_entry() -> None:
    found = _filters(metadata=" user = alice ")
    assert LogFilter("metadata.key", "eq", ("user",)) in found
    assert LogFilter("metadata.value", "eq", ("alice",)) in found
    assert LogFilter("metadata.value", "contains", ('"user":"alice",', '"user":"alice"}')) in found


def test_a_metadata_value_that_spells_a_number_or_boolean_matches_those_too() -> None:
    by_value = {f["operator"]: f["value"] for f in metadata_filters("tier", "2")}
    assert by_value["contains"] == ['"tier":"2",', '"tier":"2"}', '"tier":2,', '"tier":2}']
    by_value = {f["operator"]: f["value"] for f in metadata_filters("beta", "True")}
    assert by_value["contains"] == [
        '"beta":"True",',
        '"beta":"True"}',
        '"beta":true,',
        '"beta":true}',
    ]
    assert LogFilter("metadata.value", "eq", ("b=c",)) in _filters(metadata="a=b=c")


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"min_cost": "abc"}, "min_cost", "must be a number of dollars"),
        ({"max_cost": "NaN"}, "max_cost", "must be a number of dollars"),
        ({"min_cost": "Infinity"}, "min_cost", "must be a number of dollars"),
        ({"min_cost": "-0.01"}, "min_cost", "cannot be negative"),
        ({"min_cost": "2", "max_cost": "1"}, "max_cost", "below the minimum"),
        ({"from": "31/01/2025"}, "from", "YYYY-MM-DD"),
        ({"from": "2025-02-01", "to": "2025-01-31"}, "to", "before the start date"),
        ({"metadata": "user"}, "metadata", "key=value"),
        ({"metadata": "=alice"}, "metadata", "key=value"),
        ({"metadata": "k=" + "v" * 1025}, "metadata", "shorten"),
        ({"status": "maybe"}, "status", "any, success or error"),
        ({"per_page": "0"}, "per_page", "from 1 to 50"),
        ({"per_page": "51"}, "per_page", "from 1 to 50"),
        ({"page": "-1"}, "page", "whole number"),
        ({"page": "two"}, "page", "whole number"),
    ],
)
def test_bad_filters_are_refused_with_a_message_on_their_field(
    form: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(FilterErrors) as refused:
        parse_log_filters(form)
    assert list(refused.value.errors) == [field]
    assert message in refused.value.errors[field]


def test_every_wrong_field_is_named_at_once() -> None:
    with pytest.raises(FilterErrors) as refused:
        parse_log_filters({"min_cost": "x", "to": "soon", "metadata": "nope", "model": "ok"})
    assert set(refused.value.errors) == {"min_cost", "to", "metadata"}


@pytest.mark.parametrize(
    ("typed", "dollars"), [("0", "0"), ("0.000123", "0.000123"), ("$1,000", "1000"), ("1E1", "10")]
)
def test_cost_bounds_take_any_number_of_decimals(typed: str, dollars: str) -> None:
    assert parse_cost(typed, "The minimum cost") == Decimal(dollars)


def test_paging_and_links_keep_the_filters() -> None:
    form = read_filter_form({"model": " gpt-4o ", "status": "", "page": "3", "junk": "x"})
    assert form == {"model": "gpt-4o", "page": "3"}
    assert is_filtering(form) and not is_filtering({"page": "2", "gateway": "g"})
    parsed = parse_log_filters({"per_page": "2", "page": "3"})
    assert (parsed.offset, parsed.per_page) == (4, 2)
    assert filter_query_string(form, page=None, gateway="default") == "model=gpt-4o&gateway=default"


@pytest.mark.parametrize(("typed", "score"), [("0", 0), ("100", 100), (" 85 ", 85)])
def test_scores_are_whole_numbers_from_0_to_100(typed: str, score: int) -> None:
    assert parse_score(typed) == score


@pytest.mark.parametrize("typed", ["", "101", "-1", "8.5", "high"])
def test_other_scores_are_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="whole number from 0 to 100"):
        parse_score(typed)


def _record(**changes: Any) -> LogRecord:
    values: dict[str, Any] = {
        "id": "log1",
        "account_id": "a",
        "gateway_id": "default",
        "created_at": datetime(2025, 1, 31, 14, 5, 9, 123, tzinfo=UTC),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "path": "/chat/completions",
        "request_type": "native",
        "status_code": 200,
        "success": True,
        "cached": False,
        "duration_ms": 1234,
        "tokens_in": 1200,
        "tokens_out": 34,
        "cost_nanos": 123_000,
        "cost_estimated": False,
        "custom_cost": False,
        "credential_source": "unified",
        "zdr": False,
        "metadata": '{"user":"alice","tier":2}',
        "event_id": None,
        "step": None,
        "user_agent": None,
        "request_content_type": "application/json",
        "response_content_type": "application/json",
        "request_size": 10,
        "response_size": 10,
        "payload_collected": True,
        "request_complete": True,
        "response_complete": True,
    }
    return LogRecord(**(values | changes))


def test_a_row_reads_in_words_and_dollars() -> None:
    row = log_row(_record(), "/x")
    assert (row.time, row.status, row.cost, row.credentials) == (
        "2025-01-31 14:05:09",
        "Success 200",
        "$0.000123",
        "Unified Billing",
    )
    assert (row.tokens_in, row.duration, row.metadata) == (
        "1,200",
        "1.23 s",
        [("user", "alice"), ("tier", "2")],
    )
    failed = log_row(_record(success=False, status_code=400, cost_nanos=None), "/x")
    assert (failed.status, failed.cost) == ("Error 400", "—")
    assert log_row(_record(credential_source="byok"), "/x").credentials == "BYOK"
    assert duration_text(87) == "87 ms"
    assert metadata_entries("not json") == [("(metadata)", "not json")]


def test_bodies_are_pretty_json_or_text_with_a_note_when_cut_or_not_kept() -> None:
    pretty = body_view(b'{"a":[1,2]}', True, 11, 100)
    assert (
        pretty.is_json and pretty.text == '{\n  "a": [\n    1,\n    2\n  ]\n}' and not pretty.note
    )
    cut = body_view(b'{"a": "lo', False, 5000, 9)
    assert not cut.is_json and cut.text == '{"a": "lo'
    assert cut.note is not None and "first 9 of 5,000 bytes" in cut.note
    stream = body_view(b"data: {}\n\ndata: [DONE]\n\n", True, 24, 100)
    assert not stream.is_json and stream.text is not None and stream.text.startswith("data:")
    missing = body_view(None, False, 40, 100)
    assert missing.text is None and missing.note is not None and "Not collected" in missing.note
    assert body_view(b"\xff<b>", True, 4, 100).text == "\ufffd<b>"  # escaped by the template
