"""Streamed answers as iterators of parsed chunks: `Stream` (sync) and `AsyncStream`.

The body is read as server-sent events with the gateway's own decoder (`tollgate.sse`): each
`data:` event is one chunk, parsed as JSON (text when it is not JSON). Comments such as the
gateway's `: cf-aig-cost=...` are skipped, and `data: [DONE]` ends the stream. An error event
(OpenAI's `{"error": {...}}`, Anthropic's `event: error`, Google's `{"error": {...}}`) raises the
same typed exception an error answer would (`tollgate.sdk.errors`), after the chunks before it.

A provider that streams without SSE (Gemini's `:streamGenerateContent` without `alt=sse` sends
one JSON array) is read whole and each element yielded.

The HTTP response is closed when the iteration ends, breaks off or raises, or by `close()` /
`aclose()` / leaving the `with` block: use one of them when you stop early.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any

import httpx

from tollgate.sdk.errors import TollgateError, error_from_event
from tollgate.sse import Event, SSEDecoder


class ChunkReader:
    """Bytes in, parsed chunks out. An error event stops the reading: `error` holds it, to be
    raised once the chunks before it are handed over."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.done = False
        self.error: TollgateError | None = None

    def feed(self, data: bytes) -> list[Any]:
        return self._chunks(self._decoder.feed(data))

    def close(self) -> list[Any]:
        return self._chunks(self._decoder.close())

    def _chunks(self, events: list[Event]) -> list[Any]:
        chunks: list[Any] = []
        for event in events:
            if self.done:
                break
            if event.data == "[DONE]":
                self.done = True
                break
            try:
                payload = json.loads(event.data)
            except ValueError:
                chunks.append(event.data)
                continue
            if event.event == "error" or _is_error(payload):
                self.error = error_from_event(payload)
                self.done = True
                break
            chunks.append(payload)
        return chunks


def _is_error(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    return payload.get("type") == "error" or isinstance(payload.get("error"), dict)


def is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


def whole_body_chunks(content: bytes) -> list[Any]:
    """A stream that was not SSE: its JSON elements (or the one JSON value)."""
    if not content.strip():
        return []
    body = json.loads(content)
    chunks = body if isinstance(body, list) else [body]
    for chunk in chunks:
        if _is_error(chunk):
            raise error_from_event(chunk)
    return chunks


class Stream(Iterator[Any]):
    """The chunks of a streamed answer, parsed. Iterate it, ideally in a `with` block.

    `response` is the `httpx.Response` (its headers carry `cf-aig-log-id`, `cf-aig-step`,
    `cf-aig-cache-status`...)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iterator = self._chunks()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def _chunks(self) -> Generator[Any, None, None]:
        try:
            if not is_event_stream(self.response):
                yield from whole_body_chunks(self.response.read())
                return
            reader = ChunkReader()
            for data in self.response.iter_bytes():
                yield from reader.feed(data)
                if reader.done:
                    break
            else:
                yield from reader.close()
            if reader.error is not None:
                raise reader.error
        finally:
            self.response.close()

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._iterator.close()
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream(AsyncIterator[Any]):
    """The chunks of a streamed answer, parsed. Iterate it with `async for`, ideally in an
    `async with` block. `response` is the `httpx.Response`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iterator = self._chunks()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        try:
            if not is_event_stream(self.response):
                for chunk in whole_body_chunks(await self.response.aread()):
                    yield chunk
                return
            reader = ChunkReader()
            async for data in self.response.aiter_bytes():
                for chunk in reader.feed(data):
                    yield chunk
                if reader.done:
                    break
            else:
                for chunk in reader.close():
                    yield chunk
            if reader.error is not None:
                raise reader.error
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        await self._iterator.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
