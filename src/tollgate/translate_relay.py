"""Relaying a translated answer: the provider's response or stream, re-rendered in the client's
format as it arrives, with its usage settled on the request's hold.

Usage comes from the canonical form: `ChatResponse.usage`, or the last `UsageUpdate` of a stream
(adapters always ask their upstream for usage). A stream that ends without any is charged an
estimate from the bytes it produced (see `tollgate.billing.meter`).
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import Receive, Send

from tollgate.billing.meter import Admission, Meter
from tollgate.billing.watch import cost_headers, sse_cost_comment
from tollgate.canonical import ChatRequest, Finish, Usage, UsageUpdate
from tollgate.client_formats import ClientFormat
from tollgate.providers.base import ProviderAdapter
from tollgate.relay import close_on_disconnect
from tollgate.store.holds import Settlement
from tollgate.upstream import UpstreamResponse, UpstreamStreamBroken

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Translated:
    """One translated request: its formats, and its hold, settled exactly once."""

    def __init__(
        self,
        adapter: ProviderAdapter,
        client: ClientFormat,
        chat: ChatRequest,
        meter: Meter,
        admission: Admission,
    ) -> None:
        self.adapter = adapter
        self.client = client
        self.chat = chat
        self.meter = meter
        self.admission = admission
        self.settlement: Settlement | None = None
        self._done = False

    async def finish(
        self,
        status: int,
        usage: Usage | None,
        produced: int = 0,
        *,
        complete: bool = True,
        estimated: bool = False,
    ) -> Settlement | None:
        """Settle once. `estimated`: `usage` is the gateway's estimate, not the provider's
        count (the charge is flagged so)."""
        if self._done:
            return self.settlement
        self._done = True
        if status >= 400:
            usage, produced = None, 0
        self.settlement = await self.meter.settle(
            self.admission, usage, produced_bytes=produced, complete=complete, estimated=estimated
        )
        return self.settlement


async def relay_translated(
    translated: Translated,
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    adapter, client = translated.adapter, translated.client
    if response.status >= 400 or not translated.chat.stream:
        try:
            body = await response.read()
        except Exception:
            await translated.finish(502, None)
            raise
        finally:
            response.release()
        if response.status >= 400:
            await translated.finish(response.status, None)
            info = adapter.parse_error(response.status, body)
            rendered = client.render_error_body(info.status, info.type, info.message)
            await send_json(send, info.status, orjson.dumps(rendered), extra_headers)
            return
        try:
            parsed = adapter.parse_response(response.status, body)
        except Exception:
            await translated.finish(502, None)
            raise
        settlement = await translated.finish(200, parsed.usage, len(body))
        extra = extra_headers + cost_headers(settlement)
        await send_json(send, 200, orjson.dumps(client.render_response(parsed)), extra)
        return
    await relay_translated_stream(translated, response, receive, send, extra_headers)


async def relay_translated_stream(
    translated: Translated,
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + extra_headers}
    )
    parser = translated.adapter.stream_parser()
    renderer = translated.client.stream_renderer(translated.chat)
    watcher = asyncio.ensure_future(close_on_disconnect(receive, response))
    usage: Usage | None = None
    produced = 0
    finished = False  # a Finish event: the stream ended normally and its usage is final
    try:
        async for chunk in response.chunks():
            produced += len(chunk)
            events = parser.feed(chunk)
            for event in events:
                if type(event) is UsageUpdate:
                    usage = event.usage
                elif type(event) is Finish:
                    finished = True
            out = b"".join([renderer.render(event) for event in events])
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except UpstreamStreamBroken:
        pass  # the parser sees an unfinished stream and closes it with an error event
    finally:
        watcher.cancel()
        response.release()
    closing = parser.close()
    for event in closing:
        if type(event) is UsageUpdate:
            usage = event.usage
        elif type(event) is Finish:
            finished = True
    tail = b"".join([renderer.render(event) for event in closing])
    settlement = await translated.finish(200, usage, produced, complete=finished)
    tail += sse_cost_comment(settlement) + renderer.close()
    await send({"type": "http.response.body", "body": tail})


async def send_json(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
