"""Relaying an upstream's answer to the client unchanged, observing usage as bytes go past.

Event streams (and `stream_json` bodies: Gemini's streamed JSON array) are relayed chunk by chunk
as they arrive. Any other body is read whole first, so an upstream that breaks off mid-body is a
clean 502 rather than half a JSON document under a 200, and its cost can go in the headers.
A stream's cost is known only at its end: on OpenAI and Anthropic streams it follows as an SSE
comment (`: cf-aig-cost=...`), which their clients ignore; google-genai's parser rejects comment
lines, so Gemini streams carry none (the cost is in the request's log).

A stream that breaks (a reset, a close mid-chunk), or that the upstream ends before the answer's
end (`UsageObserver.finished`: no finish chunk, no `message_delta`), gets one in-band `error`
event from the gateway, so the client's SDK raises rather than take a partial answer for a whole
one. Its charge is estimated by the meter, unless the answer's end, and so its final usage, came
before the break.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import orjson
from starlette.types import Receive, Send

from tollgate.billing.watch import UsageWatch, cost_headers, sse_cost_comment
from tollgate.canonical import Usage
from tollgate.errors import GatewayError
from tollgate.features.retry import NO_RETRIES, RetryPolicy, send_with_retries
from tollgate.store.holds import Settlement
from tollgate.upstream import Upstream, UpstreamResponse, UpstreamStreamBroken

STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")


async def relay(
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
    *,
    stream_json: bool = False,
    watch: UsageWatch | None = None,
) -> None:
    """Send the upstream's status, headers and bytes to the client; settle the hold if any."""
    headers = response.headers + extra_headers
    streaming = response.content_type.startswith(STREAM_TYPES) or (
        stream_json and response.status < 400
    )
    if not streaming:
        await _relay_whole(response, send, headers, watch)
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    watcher = asyncio.ensure_future(close_on_disconnect(receive, response))
    tail = b""
    ended = True  # the upstream closed the stream itself (not a reset, not the client leaving)
    try:
        async for chunk in response.chunks():
            out = watch.feed(chunk) if watch is not None else chunk
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except UpstreamStreamBroken as exc:
        ended = False
        if not watcher.done():
            tail = _stream_error_event(str(exc))
    finally:
        watcher.cancel()
        response.release()
        if watch is not None:
            finished = watch.observer.finished if response.status < 400 else None
            if ended and finished is False and not watcher.done():
                # A clean end before the answer's: without this the SDKs would take the
                # partial answer for a whole one. Closing marks it cut short, as a break or a
                # client that left does, so the response cache does not keep it either.
                tail = _stream_error_event(_ENDED_EARLY)
                response.close()
            tail = watch.tail() + tail
            # The usage is whole once the answer's end was seen, even if the connection broke
            # after it; else only if the upstream ended the stream itself. A partial usage
            # (Anthropic's message_start) is estimated by the meter.
            complete = finished if finished is not None else ended
            usage = watch.observer.usage
            settlement = await watch.finish(response.status, usage, complete=complete)
            if watch.cost_comment and response.content_type.startswith(b"text/event-stream"):
                tail += sse_cost_comment(settlement)
    await send({"type": "http.response.body", "body": tail})


async def _relay_whole(
    response: UpstreamResponse,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    watch: UsageWatch | None,
) -> None:
    try:
        body = await response.read()
    except GatewayError:
        if watch is not None:
            await watch.finish(502, None)
        raise
    finally:
        response.release()
    if watch is not None:
        watch.produced = len(body)
        usage = watch.usage_from_body(body) if response.status < 400 else None
        headers = headers + cost_headers(await watch.finish(response.status, usage))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def close_on_disconnect(receive: Receive, response: UpstreamResponse) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.close()  # stops the relay loop and frees the upstream connection


_ENDED_EARLY = "the upstream ended it before the end of the answer"


def _stream_error_event(cause: str) -> bytes:
    """An in-band error both SDKs raise: Anthropic's `error` event (`type: error`), which the
    OpenAI SDK reads by its `error` object."""
    error = {
        "type": "error",
        "error": {
            "message": f"The upstream stream broke before it finished: {cause}",
            "type": "api_error",
            "code": "upstream_stream_broken",
        },
    }
    return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"


class Settles(Protocol):
    async def finish(self, status: int, usage: Usage | None) -> Settlement | None: ...


async def send_upstream(
    upstream: Upstream,
    settler: Settles | None,
    policy: RetryPolicy = NO_RETRIES,
    **request: Any,
) -> UpstreamResponse:
    """`upstream.send` with the request's retries and timeout (`tollgate.features.retry`),
    releasing the request's hold when the last attempt fails before any answer."""
    try:
        if policy.max_attempts == 1:  # no retries (most requests): one send, without the loop
            return await upstream.send(**request, first_byte_timeout=policy.timeout_seconds)
        return await send_with_retries(upstream, policy, **request)
    except GatewayError:
        if settler is not None:
            await settler.finish(502, None)  # nothing was produced: never billed
        raise
