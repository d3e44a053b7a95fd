"""LogCapture: what one request's log records from its ASGI messages (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from starlette.types import Message

from tollgate.errors import InvalidRequest
from tollgate.features.context import RequestContext
from tollgate.features.logs import LogCapture
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
