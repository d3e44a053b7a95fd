"""`cf-aig-metadata` and `cf-aig-event-id` as the data plane reads them (features/metadata.py)."""

from __future__ import annotations

import json
import logging

import pytest

from tollgate.errors import InvalidRequest
from tollgate.features.headers import HEADER_VALUE_MAX
from tollgate.features.metadata import (
    EVENT_ID_MAX_CHARS,
    METADATA_KEY_MAX_CHARS,
    METADATA_STRING_MAX_CHARS,
    read_event_id,
    read_metadata,
)


def metadata_headers(value: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = value if isinstance(value, bytes) else value.encode()
    return [(b"content-type", b"application/json"), (b"cf-aig-metadata", raw)]


def refused(value: str | bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        read_metadata(metadata_headers(value))
    error = caught.value
    assert error.status == 400 and error.code == "invalid_header"
    assert error.param == "cf-aig-metadata" and "cf-aig-metadata" in str(error)
    return error


def test_absent_header_is_no_metadata() -> None:
    assert read_metadata([(b"content-type", b"application/json")]) == {}


def test_flat_values_are_kept_with_their_json_types() -> None:
    sent = {"team": "red", "user": 42, "ratio": 0.5, "beta": True, "note": ""}
    assert read_metadata(metadata_headers(json.dumps(sent))) == sent


def test_utf8_values_survive_the_header() -> None:
    # Headers arrive as bytes; the JSON inside is UTF-8, not latin-1.
    sent = json.dumps({"city": "Zürich", "team": "日本"}, ensure_ascii=False).encode()
    assert read_metadata(metadata_headers(sent)) == {"city": "Zürich", "team": "日本"}


def test_reserved_cf_keys_are_not_saved_and_do_not_count() -> None:
    sent = {"cf.user_id": "spoofed", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    assert read_metadata(metadata_headers(json.dumps(sent))) == {
        "a": 1,
        "b": 2,
        "c": 3,
        "d": 4,
        "e": 5,
    }


@pytest.mark.parametrize(
    ("value", "kind"),
    [({"plan": "pro"}, "an object"), ([1, 2], "an array"), (None, "null")],
)
def test_a_value_that_is_not_flat_is_ignored_with_a_warning(
    value: object, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent = json.dumps({"team": "red", "nested": value})
    with caplog.at_level(logging.WARNING, logger="tollgate.features.metadata"):
        assert read_metadata(metadata_headers(sent)) == {"team": "red"}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "'nested' ignored" in record.getMessage() and kind in record.getMessage()
    assert record.__dict__["metadata_key"] == "nested"
    assert record.__dict__["reason"] == "not_flat"


@pytest.mark.parametrize("value", ["{not json", "", "null", '["team"]', '"team"', "5"])
def test_invalid_json_or_not_an_object_is_a_400(value: str) -> None:
    assert "expected a JSON object" in str(refused(value))


def test_invalid_utf8_is_a_400() -> None:
    refused(b'{"team": "\xff"}')


def test_more_than_five_flat_entries_is_a_400_naming_them() -> None:
    error = refused(json.dumps({f"k{i}": i for i in range(6)}))
    assert "at most 5 entries" in str(error) and "6 entries" in str(error)


def test_ignored_nested_values_do_not_count_toward_the_five() -> None:
    sent = {**{f"k{i}": i for i in range(5)}, "deep": {"x": 1}}
    assert len(read_metadata(metadata_headers(json.dumps(sent)))) == 5


def test_an_over_long_key_or_string_value_is_a_400() -> None:
    assert "keys of at most" in str(refused(json.dumps({"k" * (METADATA_KEY_MAX_CHARS + 1): 1})))
    long_value = "v" * (METADATA_STRING_MAX_CHARS + 1)
    assert "string values of at most" in str(refused(json.dumps({"team": long_value})))


def test_a_header_over_the_generic_cap_is_a_400_before_parsing() -> None:
    sent = json.dumps({"team": "x" * HEADER_VALUE_MAX})
    assert f"at most {HEADER_VALUE_MAX} bytes" in str(refused(sent))


def test_event_id() -> None:
    assert read_event_id([]) is None
    assert read_event_id([(b"cf-aig-event-id", b"")]) is None
    assert read_event_id([(b"cf-aig-event-id", b" evt-123 ")]) == "evt-123"
    assert read_event_id([(b"cf-aig-event-id", b"e" * EVENT_ID_MAX_CHARS)]) == "e" * 256


def test_an_over_long_event_id_is_a_400_naming_the_header() -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_event_id([(b"cf-aig-event-id", b"e" * (EVENT_ID_MAX_CHARS + 1))])
    assert caught.value.param == "cf-aig-event-id" and caught.value.code == "invalid_header"
    assert f"at most {EVENT_ID_MAX_CHARS} characters" in str(caught.value)
