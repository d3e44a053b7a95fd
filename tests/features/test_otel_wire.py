"""OTLP bodies (features/otel_wire.py) and trace context (features/otel.py), without a network.

The protobuf body is read back with a generic protobuf wire-format reader written here from the
encoding's rules (varints, 64-bit, length-delimited), using the field numbers of
opentelemetry-proto's `.proto` files as this file spells them out, so the test does not share the
encoder's code.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest

from tollgate.features.otel import trace_context
from tollgate.features.otel_wire import STATUS_ERROR, Span, encode_json, encode_protobuf

Fields = dict[int, list[Any]]


def read_fields(data: bytes) -> Fields:
    """One protobuf message's fields: number -> values (ints, or bytes for length-delimited)."""
    fields: Fields = {}
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = read_varint(data, at)
        elif wire_type == 1:
            value, at = data[at : at + 8], at + 8
        elif wire_type == 2:
            length, at = read_varint(data, at)
            value, at = data[at : at + length], at + length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def read_value(any_value: bytes) -> Any:
    """An AnyValue: string_value=1, bool_value=2, int_value=3, double_value=4."""
    fields = read_fields(any_value)
    if 1 in fields:
        return fields[1][0].decode()
    if 2 in fields:
        return bool(fields[2][0])
    if 3 in fields:
        raw = fields[3][0]
        return raw - (1 << 64) if raw >= 1 << 63 else raw
    return struct.unpack("<d", fields[4][0])[0]


def read_attributes(key_values: list[bytes]) -> dict[str, Any]:
    """KeyValue: key=1, value=2."""
    attributes = {}
    for encoded in key_values:
        fields = read_fields(encoded)
        attributes[fields[1][0].decode()] = read_value(fields[2][0])
    return attributes


def decode_protobuf_spans(body: bytes) -> list[dict[str, Any]]:
    """An ExportTraceServiceRequest's spans, shaped like OTLP/JSON spans (ids in hex)."""
    spans = []
    for resource_spans in read_fields(body)[1]:  # resource_spans=1
        resource_fields = read_fields(resource_spans)
        resource = read_attributes(read_fields(resource_fields[1][0]).get(1, []))
        assert resource["service.name"] == "tollgate"
        for scope_spans in resource_fields[2]:  # scope_spans=2
            scope_fields = read_fields(scope_spans)
            assert read_fields(scope_fields[1][0])[1] == [b"tollgate"]  # scope.name
            for encoded in scope_fields.get(2, []):  # spans=2
                span = read_fields(encoded)
                decoded: dict[str, Any] = {
                    "traceId": span[1][0].hex(),
                    "spanId": span[2][0].hex(),
                    "name": span[5][0].decode(),
                    "kind": span[6][0],
                    "startTimeUnixNano": str(struct.unpack("<Q", span[7][0])[0]),
                    "endTimeUnixNano": str(struct.unpack("<Q", span[8][0])[0]),
                    "attributes": read_attributes(span.get(9, [])),
                }
                if 4 in span:
                    decoded["parentSpanId"] = span[4][0].hex()
                if 15 in span:  # Status: message=2, code=3
                    status = read_fields(span[15][0])
                    decoded["status"] = {
                        "code": status[3][0],
                        "message": status.get(2, [b""])[0].decode(),
                    }
                spans.append(decoded)
    return spans


SPAN = Span(
    trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
    span_id=bytes.fromhex("00f067aa0ba902b7"),
    parent_span_id=bytes.fromhex("a3ce929d0e0e4736"),
    name="chat gpt-4o-mini",
    start_ns=1_764_000_000_000_000_000,
    end_ns=1_764_000_000_250_000_000,
    attributes=(
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.usage.input_tokens", 12),
        ("gen_ai.usage.cost", 0.000125),
        ("tollgate.cached", False),
        ("signed", -3),
        ("unicode", "café"),
    ),
    status_code=STATUS_ERROR,
    status_message="HTTP 502",
)


def test_protobuf_body_reads_back_as_the_same_span() -> None:
    (span,) = decode_protobuf_spans(encode_protobuf([SPAN]))
    assert span == {
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "spanId": "00f067aa0ba902b7",
        "parentSpanId": "a3ce929d0e0e4736",
        "name": "chat gpt-4o-mini",
        "kind": 2,
        "startTimeUnixNano": "1764000000000000000",
        "endTimeUnixNano": "1764000000250000000",
        "attributes": dict(SPAN.attributes),
        "status": {"code": 2, "message": "HTTP 502"},
    }


def test_json_body_follows_otlp_json_rules() -> None:
    body = orjson.loads(encode_json([SPAN]))
    (resource,) = body["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "tollgate"}} in resource["resource"][
        "attributes"
    ]
    (scope,) = resource["scopeSpans"]
    (span,) = scope["spans"]
    assert scope["scope"]["name"] == "tollgate"
    assert span["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # hex, not base64
    assert span["startTimeUnixNano"] == "1764000000000000000"  # 64-bit integers as strings
    assert span["status"] == {"code": 2, "message": "HTTP 502"}
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values["gen_ai.usage.input_tokens"] == {"intValue": "12"}
    assert values["gen_ai.usage.cost"] == {"doubleValue": 0.000125}
    assert values["tollgate.cached"] == {"boolValue": False}
    assert values["gen_ai.request.model"] == {"stringValue": "gpt-4o-mini"}


def test_several_spans_share_one_resource_and_scope() -> None:
    assert len(decode_protobuf_spans(encode_protobuf([SPAN, SPAN, SPAN]))) == 3
    (resource,) = orjson.loads(encode_json([SPAN, SPAN]))["resourceSpans"]
    assert len(resource["scopeSpans"][0]["spans"]) == 2


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (None, None)),
        (
            {"cf-aig-otel-trace-id": TRACE, "cf-aig-otel-parent-span-id": PARENT},
            (TRACE, PARENT),
        ),
        ({"cf-aig-otel-trace-id": TRACE.upper()}, (TRACE, None)),
        ({"traceparent": f"00-{TRACE}-{PARENT}-01"}, (TRACE, PARENT)),
        # Cloudflare's headers win over a traceparent.
        (
            {"cf-aig-otel-trace-id": TRACE, "traceparent": f"00-{'1' * 32}-{PARENT}-01"},
            (TRACE, None),
        ),
        # Malformed or all-zero ids are ignored: tracing never fails a request.
        ({"cf-aig-otel-trace-id": "not-hex"}, (None, None)),
        ({"cf-aig-otel-trace-id": "0" * 32, "cf-aig-otel-parent-span-id": PARENT}, (None, None)),
        ({"cf-aig-otel-trace-id": TRACE, "cf-aig-otel-parent-span-id": "xyz"}, (TRACE, None)),
        ({"traceparent": "garbage"}, (None, None)),
    ],
)
def test_trace_context_from_request_headers(
    headers: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    trace_id, parent = trace_context(raw)
    assert (trace_id.hex() if trace_id else None, parent.hex() if parent else None) == expected
