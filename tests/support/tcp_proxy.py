"""A TCP proxy to a shared server (PostgreSQL unless told otherwise, or Redis) that a test
controls: `cut` it and the server is down for whoever connects through it, `stall` it and the
server hangs, `forward` and it is back. The shared server itself is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.support.server import free_port

PG_HOST, PG_PORT = "127.0.0.1", 5432


class TcpProxy:
    """127.0.0.1:port -> `target`, on an event loop of its own; `forward`, `cut`, `stall`."""

    def __init__(self, target: tuple[str, int] = (PG_HOST, PG_PORT)) -> None:
        self.target = target
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def forward(self) -> None:
        self._run(self._listen(self._pipe))

    def stall(self) -> None:
        """Accept connections and never answer (a database that hangs)."""
        self._run(self._listen(self._swallow))

    def cut(self) -> None:
        """Stop listening and drop every open connection (a database that is down)."""
        self._run(self._close())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _listen(self, handler: Any) -> None:
        await self._close()
        self.server = await asyncio.start_server(handler, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.add(up_writer)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass
