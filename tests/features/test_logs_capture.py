"""LogCapture: what one request's log records from its ASGI messages (no server needed)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from starlette.types import Message

from tollgate.errors import InvalidRequest
from tollgate.features.context import RequestContext
from tollgate.features.logs import LogCapture, without_credentials
from tollgate.gateway_config import default_gateway_config
from tollgate.store.models import GatewayRecord

ACCOUNT = "a" * 32


def gateway(account_id: str = ACCOUNT, **config: object) -> GatewayRecord:
    now = datetime.now(UTC)
    settings = {**default_gateway_config(), **config}
    return GatewayRecord(account_id, "default", settings, True, now, now)


async def run_request(
    capture: LogCapture, request: list[bytes], response: list[bytes], status: int = 200
) -> None:
    """Drive the capture's receive and send as a handler would."""
    for _ in request:
        await capture.receive()
    await capture.send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    for chunk in response:
        await capture.send({"type": "http.response.body", "body": chunk, "more_body": True})


def make_capture(
    request: list[bytes], headers: list[tuple[bytes, bytes]] | None = None, cap: int = 1024
) -> tuple[LogCapture, list[Message]]:
    sent: list[Message] = []
    chunks = iter(request)

    async def receive() -> Message:
        chunk = next(chunks, b"")
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    ctx = RequestContext(ACCOUNT, "default")
    all_headers = [(b"content-type", b"application/json"), *(headers or [])]
    capture = LogCapture(
        ctx, all_headers, send, receive, request_type="native", path="chat/completions", cap=cap
    )
    return capture, sent


async def finished_capture(account_id: str, log_id: str) -> LogCapture:
    capture, _ = make_capture([b'{"model":"m"}'])
    capture.ctx.log_id = log_id
    capture.ctx.gateway = gateway(account_id)
    await run_request(capture, [b'{"model":"m"}'], [b'{"ok":true}'])
    return capture


async def test_the_record_has_status_sizes_and_bodies_and_passes_messages_on() -> None:
    capture, sent = make_capture([b'{"a":', b"1}"])
    capture.ctx.gateway = gateway()
    capture.ctx.provider, capture.ctx.model = "openai", "gpt-4o"
    await run_request(capture, [b'{"a":', b"1}"], [b'{"b"', b":2}"], status=201)

    record = capture.record()

    assert record.status_code == 201 and record.success is True
    assert record.request_body == b'{"a":1}' and record.request_size == 7
    assert record.response_body == b'{"b":2}' and record.response_size == 7
    assert record.request_complete and record.response_complete
    assert record.provider == "openai" and record.model == "gpt-4o"
    assert record.response_content_type == "application/json"
    assert [m["type"] for m in sent] == ["http.response.start", *["http.response.body"] * 2]


async def test_bodies_are_cut_at_the_cap_and_flagged() -> None:
    capture, _ = make_capture([b"x" * 10, b"y" * 10], cap=15)
    capture.ctx.gateway = gateway()
    await run_request(capture, [b"x" * 10, b"y" * 10], [b"z" * 40], status=500)

    record = capture.record()

    assert record.request_body == b"x" * 10 + b"y" * 5 and record.request_complete is False
    assert record.response_body == b"z" * 15 and record.response_complete is False
    assert (record.request_size, record.response_size) == (20, 40)
    assert record.success is False


async def test_collect_payload_false_keeps_sizes_but_no_bodies() -> None:
    capture, _ = make_capture([b"{}"], [(b"cf-aig-collect-log-payload", b"false")])
    capture.ctx.gateway = gateway()
    await run_request(capture, [b"{}"], [b"{}"])

    record = capture.record()

    assert record.request_body is None and record.response_body is None
    assert record.payload_collected is False and record.request_size == 2


@pytest.mark.parametrize("name", [b"cf-aig-collect-log", b"cf-aig-collect-log-payload"])
def test_a_bad_collect_header_is_refused_naming_it(name: bytes) -> None:
    with pytest.raises(InvalidRequest, match=name.decode()) as refused:
        make_capture([], [(name, b"yes")])
    assert refused.value.status == 400


# A Universal body: each step's credentials in every form tollgate reads (SECRET marks them all).
UNIVERSAL_BODY = (
    b'[{"provider":"openai","endpoint":"chat/completions","headers":{"Authorization":'
    b'"Bearer SECRET-1\\"x","x-api-key" : "SECRET-2","x-goog-api-key":"SECRET-3",'
    b'"api-key":"SECRET-4","cf-aig-authorization":"Bearer SECRET-5","x-team":"ml"},'
    b'"query":{"model":"m","messages":[]}},{"provider":"google-ai-studio","authorization":'
    b'"Bearer SECRET-6","endpoint":"v1beta/models/g:generateContent?alt=sse&key=SECRET-7&x=1",'
    b'"query":{}}]'
)


def test_a_universal_log_keeps_the_body_without_its_credentials() -> None:
    kept = json.loads(without_credentials(UNIVERSAL_BODY))

    assert kept[0]["headers"] == {
        "Authorization": "REDACTED",
        "x-api-key": "REDACTED",
        "x-goog-api-key": "REDACTED",
        "api-key": "REDACTED",
        "cf-aig-authorization": "REDACTED",
        "x-team": "ml",
    }
    assert kept[0]["query"] == {"model": "m", "messages": []}
    assert kept[1]["authorization"] == "REDACTED"
    assert kept[1]["endpoint"] == "v1beta/models/g:generateContent?alt=sse&key=REDACTED&x=1"


def test_a_universal_body_cut_anywhere_keeps_no_part_of_a_credential() -> None:
    # A body longer than logs.body_max_bytes is cut: a value cut short is redacted too.
    for end in range(len(UNIVERSAL_BODY) + 1):
        assert b"SEC" not in without_credentials(UNIVERSAL_BODY[:end]), end


async def test_only_universal_requests_have_their_bodies_redacted() -> None:
    for request_type, expected in [("universal", b'"REDACTED"'), ("native", b"SECRET-2")]:
        capture = LogCapture(
            RequestContext(ACCOUNT, "default"),
            [(b"content-type", b"application/json")],
            lambda message: asyncio.sleep(0),
            lambda: asyncio.sleep(0, {"type": "http.request", "body": UNIVERSAL_BODY}),
            request_type=request_type,
            path="",
            cap=len(UNIVERSAL_BODY),
        )
        capture.ctx.gateway = gateway()
        await capture.receive()
        record = capture.record()
        assert record.request_body is not None and expected in record.request_body
        assert record.request_size == len(UNIVERSAL_BODY)
