"""A raw TCP relay to the simulator that fails at the connection level on request: a reset
(RST, not FIN) before the response, mid-body or after the Nth event of a stream. The simulator's
own controls cover everything above TCP (`tollgate.sim`); `tests/e2e/test_upstream_faults.py`
uses both."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from tests.support.server import free_port


class FaultProxy:
    """127.0.0.1:port -> the simulator, one request per connection, on an event loop of its own.

    A request's `x-fault` header picks what happens; without one the exchange is relayed as is:

    - `reset-before-response`: the request is read, then the connection is reset (RST);
    - `reset-mid-body`: the response head and half of its (Content-Length) body, then RST;
    - `reset-after-events=N`: the response head and the body up to the end of its Nth SSE event
      (its Nth blank line), then RST;
    - `pause-after-events=N`: the same, then a pause of `x-fault-pause-ms` (default 1000), then
      the rest of the stream.

    The proxy asks the simulator to close after its answer (`Connection: close`), so the body
    ends where the simulator's does, and the gateway never reuses a connection it was told to
    drop.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):  # exchanges still waiting on a stalled simulator
            writer.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.writers.add(writer)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the gateway went away first (it gave up on a stalled answer)
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        )
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        fault = fields.get("x-fault", "")
        if fault == "reset-before-response":
            await _reset(writer)
            return
        kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
        request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers.add(up_writer)
        try:
            up_writer.write(request + body)
            await up_writer.drain()
            pause = int(fields.get("x-fault-pause-ms", "1000")) / 1000
            await self._respond(up_reader, writer, fault, pause)
        finally:
            self.writers.discard(up_writer)
            up_writer.close()

    async def _respond(
        self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: str, pause: float
    ) -> None:
        head = await upstream.readuntil(b"\r\n\r\n")
        writer.write(head)
        if fault == "reset-mid-body":
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            writer.write(await upstream.readexactly(length // 2))
            await _reset(writer)
            return
        action, _, count = fault.partition("-after-events=")
        events_left = int(count) if count else -1  # -1: relay as is
        tail = b""
        while data := await upstream.read(65536):
            seen = tail + data
            cut = _end_of_event(seen, events_left) if events_left >= 0 else None
            if cut is None:
                events_left -= seen.count(b"\n\n") if events_left >= 0 else 0
                writer.write(data)
                tail = seen[-1:]
                continue
            writer.write(seen[len(tail) : cut])
            if action == "reset":
                await _reset(writer)
                return
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(seen[cut:])
            events_left, tail = -1, b""
        await writer.drain()


def _end_of_event(data: bytes, count: int) -> int | None:
    """The offset just past the `count`th blank line in `data`, or None if there are fewer."""
    at = -2
    for _ in range(count):
        at = data.find(b"\n\n", at + 2)
        if at < 0:
            return None
    return at + 2


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Send what is written, then reset the connection (RST, not FIN): SO_LINGER 0 and close."""
    await writer.drain()
    await asyncio.sleep(0.05)  # let the peer read what was sent: an RST discards unread data
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
