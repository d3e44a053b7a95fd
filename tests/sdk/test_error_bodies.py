"""Every error body shape the gateway renders (and a provider's own, relayed) maps to the typed
exception of its status, with the gateway's code and message. Table-driven, no server; the
live tests (`test_errors.py`) show the same from real answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tollgate.sdk import (
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    SpendLimitExceeded,
    TollgateError,
    UpstreamError,
)
from tollgate.sdk._streams import ChunkReader
from tollgate.sdk.errors import error_from_response

OPENAI = {
    "error": {
        "message": "no credits",
        "type": "insufficient_quota",
        "code": "insufficient_credits",
        "param": None,
    }
}
ANTHROPIC = {
    "type": "error",
    "error": {"type": "billing_error", "message": "no credits", "code": "insufficient_credits"},
}
GOOGLE = {
    "error": {
        "code": 402,
        "message": "no credits",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"reason": "insufficient_credits"}],
    }
}
CLOUDFLARE = {
    "success": False,
    "errors": [{"code": 7002, "message": "no credits", "error_code": "insufficient_credits"}],
    "messages": [],
    "result": None,
}
AI_GATEWAY_ERROR = {
    "success": False,
    "error": [{"code": 2021, "message": "no credits"}],
    "name": "AiGatewayError",
}


@pytest.mark.parametrize("body", [OPENAI, ANTHROPIC, GOOGLE, CLOUDFLARE])
def test_each_format_gives_the_same_code_and_message(body: dict[str, Any]) -> None:
    error = error_from_response(402, {"cf-aig-log-id": "L1"}, json.dumps(body).encode())
    assert type(error) is InsufficientCredits
    assert (error.status, error.code, error.message) == (402, "insufficient_credits", "no credits")
    assert error.log_id == "L1"
    assert error.body == body
    assert str(error) == "402 insufficient_credits: no credits"


STATUSES: list[tuple[int, str, type[TollgateError]]] = [
    (400, "invalid_header", InvalidRequest),
    (413, "request_too_large", InvalidRequest),
    (401, "invalid_token", AuthenticationError),
    (403, "missing_permission", PermissionDenied),
    (404, "log_not_found", NotFound),
    (409, "already_exists", TollgateError),
    (429, "rate_limited", RateLimited),
    (429, "spend_limit_exceeded", SpendLimitExceeded),
    (500, "internal_error", UpstreamError),
    (502, "upstream_unreachable", UpstreamError),
    (504, "upstream_timeout", UpstreamError),
]


@pytest.mark.parametrize(("status", "code", "cls"), STATUSES)
def test_status_and_code_choose_the_class(status: int, code: str, cls: type[TollgateError]) -> None:
    body = {"error": {"message": "m", "type": "t", "code": code, "param": "p"}}
    error = error_from_response(status, {"Retry-After": "7"}, json.dumps(body).encode())
    assert type(error) is cls
    assert (error.code, error.param) == (code, "p")
    if isinstance(error, RateLimited):
        assert error.retry_after == 7.0


def test_odd_bodies_still_give_a_useful_error() -> None:
    upstream = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
    error = error_from_response(503, {}, json.dumps(upstream).encode())
    assert (type(error), error.code, error.message) == (UpstreamError, "server_error", "overloaded")
    cloudflare = error_from_response(402, {}, json.dumps(AI_GATEWAY_ERROR).encode())
    assert (cloudflare.code, cloudflare.message) == ("2021", "no credits")
    text = error_from_response(502, {}, b"Bad Gateway")
    assert (text.code, text.message, text.body) == ("http_502", "Bad Gateway", "Bad Gateway")
    empty = error_from_response(404, {}, b"")
    assert type(empty) is NotFound and "HTTP 404" in empty.message
    dated = error_from_response(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")
    assert isinstance(dated, RateLimited) and dated.retry_after == 0.0


def test_stream_error_events_raise_after_the_chunks_before_them() -> None:
    reader = ChunkReader()
    chunks = reader.feed(
        b'data: {"n": 1}\n\n: cf-aig-cost=0.1\n\ndata: {"n": 2}\n\n'
        b'data: {"error": {"message": "cut", "type": "api_error", "code": "upstream_error"}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert chunks == [{"n": 1}, {"n": 2}]
    assert isinstance(reader.error, UpstreamError)
    assert (reader.error.status, reader.error.code) == (502, "upstream_error")
    anthropic = ChunkReader()
    anthropic.feed(
        b'event: error\ndata: {"type": "error", "error": {"type": "rate_limit_error", '
        b'"message": "slow down"}}\n\n'
    )
    assert isinstance(anthropic.error, RateLimited) and anthropic.error.status == 429
