"""OTLP trace export bodies, in both encodings OTLP/HTTP allows: JSON and binary protobuf.

Pure: spans in, bytes out. Both encode one `ExportTraceServiceRequest` (opentelemetry-proto,
`collector/trace/v1`) holding one resource (`service.name = tollgate`) and one instrumentation
scope (`tollgate`) with every span of the batch. Written by hand rather than with the
`opentelemetry-proto` package: the few messages a span needs are a page of code, and the
gateway keeps no protobuf runtime for them.

The field numbers, from `opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto`:

    ExportTraceServiceRequest  resource_spans=1
    ResourceSpans              resource=1  scope_spans=2
    Resource                   attributes=1 (KeyValue)
    ScopeSpans                 scope=1  spans=2
    InstrumentationScope       name=1  version=2
    Span                       trace_id=1 (bytes)  span_id=2  parent_span_id=4  name=5  kind=6
                               start_time_unix_nano=7 (fixed64)  end_time_unix_nano=8 (fixed64)
                               attributes=9  status=15
    Status                     message=2  code=3 (0 unset, 1 ok, 2 error)
    KeyValue                   key=1  value=2 (AnyValue)
    AnyValue                   string_value=1  bool_value=2  int_value=3  double_value=4

JSON follows the OTLP/JSON rules: lowerCamelCase names, trace and span ids as hex (not base64),
64-bit integers as decimal strings, enums as numbers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from tollgate import __version__

AttributeValue = str | bool | int | float
Attributes = tuple[tuple[str, AttributeValue], ...]

SPAN_KIND_SERVER = 2
STATUS_UNSET, STATUS_ERROR = 0, 2
SERVICE_NAME = "tollgate"
CONTENT_TYPES = {"json": "application/json", "protobuf": "application/x-protobuf"}


@dataclass(frozen=True, slots=True)
class Span:
    """One finished request, as the collector will see it."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes  # 8 bytes, or empty for a root span
    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes
    status_code: int = STATUS_UNSET
    status_message: str = ""


def encode(spans: Sequence[Span], content_type: str) -> bytes:
    """The export request's body in `content_type` (`json` or `protobuf`)."""
    return encode_protobuf(spans) if content_type == "protobuf" else encode_json(spans)


# --- JSON -----------------------------------------------------------------------------------


def encode_json(spans: Sequence[Span]) -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": _json_attributes(_RESOURCE)},
                    "scopeSpans": [
                        {
                            "scope": {"name": SERVICE_NAME, "version": __version__},
                            "spans": [_json_span(span) for span in spans],
                        }
                    ],
                }
            ]
        }
    )


def _json_span(span: Span) -> dict[str, object]:
    encoded: dict[str, object] = {
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "name": span.name,
        "kind": SPAN_KIND_SERVER,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": _json_attributes(span.attributes),
    }
    if span.parent_span_id:
        encoded["parentSpanId"] = span.parent_span_id.hex()
    if span.status_code != STATUS_UNSET:
        encoded["status"] = {"code": span.status_code, "message": span.status_message}
    return encoded


def _json_attributes(attributes: Attributes) -> list[dict[str, object]]:
    return [{"key": key, "value": _json_value(value)} for key, value in attributes]


def _json_value(value: AttributeValue) -> dict[str, object]:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


# --- protobuf -------------------------------------------------------------------------------

_VARINT, _FIXED64, _BYTES = 0, 1, 2


def encode_protobuf(spans: Sequence[Span]) -> bytes:
    resource = b"".join(_message(1, _key_value(k, v)) for k, v in _RESOURCE)
    scope = _string(1, SERVICE_NAME) + _string(2, __version__)
    scope_spans = _message(1, scope) + b"".join(_message(2, _pb_span(s)) for s in spans)
    resource_spans = _message(1, resource) + _message(2, scope_spans)
    return _message(1, resource_spans)


def _pb_span(span: Span) -> bytes:
    parts = [
        _message(1, span.trace_id),
        _message(2, span.span_id),
        _message(4, span.parent_span_id) if span.parent_span_id else b"",
        _string(5, span.name),
        _tag(6, _VARINT) + _varint(SPAN_KIND_SERVER),
        _tag(7, _FIXED64) + struct.pack("<Q", span.start_ns),
        _tag(8, _FIXED64) + struct.pack("<Q", span.end_ns),
        *(_message(9, _key_value(k, v)) for k, v in span.attributes),
    ]
    if span.status_code != STATUS_UNSET:
        status = _string(2, span.status_message) + _tag(3, _VARINT) + _varint(span.status_code)
        parts.append(_message(15, status))
    return b"".join(parts)


def _key_value(key: str, value: AttributeValue) -> bytes:
    return _string(1, key) + _message(2, _pb_value(value))


def _pb_value(value: AttributeValue) -> bytes:
    if isinstance(value, bool):
        return _tag(2, _VARINT) + _varint(int(value))
    if isinstance(value, int):  # int64: a negative number as its two's complement
        return _tag(3, _VARINT) + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(value, float):
        return _tag(4, _FIXED64) + struct.pack("<d", value)
    return _string(1, value)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    return _tag(field, _BYTES) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _message(field, text.encode())


_RESOURCE: Attributes = (("service.name", SERVICE_NAME), ("service.version", __version__))
