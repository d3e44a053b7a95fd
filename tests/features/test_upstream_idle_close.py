"""A provider that closes a kept-alive connection as idle just as the gateway sends a request on
it: the request is sent once more on a new connection, and only then (`tollgate.upstream`).

The provider is a raw HTTP/1.1 server on a real socket that follows a script: for each
(connection, request) it answers, closes the connection after reading the request (FIN), resets
it (RST), or works on the request for a while and then closes. The client is the gateway's own
`Upstream` pool, as the data plane uses it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from tollgate.errors import UpstreamUnavailable
from tollgate.settings import UpstreamSettings
from tollgate.upstream import IDLE_CLOSE_WINDOW_SECONDS, Upstream

ANSWER = b'{"ok":true}'
# (connection number, request number on that connection) -> what the provider does
Script = Callable[[int, int], str]


@dataclass
class ScriptedProvider:
    script: Script
    received: list[tuple[int, int]] = field(default_factory=list)
    server: asyncio.Server | None = None
    connections: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection, self.connections = self.connections, self.connections + 1
        for number in range(100):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            self.received.append((connection, number))
            action = self.script(connection, number)
            if action == "answer":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(ANSWER)}\r\n\r\n".encode()
                    + ANSWER
                )
                await writer.drain()
                continue
            if action == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if action == "work-then-close":
                await asyncio.sleep(IDLE_CLOSE_WINDOW_SECONDS + 0.2)
            break  # "close", or after the work: close without an answer
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(UpstreamSettings(first_byte_timeout_seconds=10))
    await client.start()
    yield client
    await client.close()


async def provider(script: Script) -> ScriptedProvider:
    scripted = ScriptedProvider(script)
    scripted.server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    return scripted


async def send(upstream: Upstream, scripted: ScriptedProvider) -> int:
    response = await upstream.send(
        provider="openai",
        method="POST",
        url=scripted.url,
        headers=[("content-type", "application/json")],
        body=b'{"model":"gpt-4o-mini","messages":[]}',
    )
    body = await response.read()
    assert body == ANSWER
    return response.status


@pytest.mark.parametrize("close", ["close", "reset"])
async def test_a_request_on_a_connection_closed_as_idle_is_sent_again_on_a_new_one(
    upstream: Upstream, close: str
) -> None:
    scripted = await provider(
        lambda connection, number: close if (connection, number) == (0, 1) else "answer"
    )
    assert await send(upstream, scripted) == 200
    assert await send(upstream, scripted) == 200  # its kept-alive connection closes on it
    assert await send(upstream, scripted) == 200
    # Connection 0 took the first request and dropped the second, which went again on 1.
    assert scripted.received == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert upstream.failures == {}


async def test_a_new_connection_closed_before_answering_is_a_502_without_a_second_try(
    upstream: Upstream,
) -> None:
    scripted = await provider(lambda connection, number: "close")
    with pytest.raises(UpstreamUnavailable, match="closed the connection before responding"):
        await send(upstream, scripted)
    assert scripted.received == [(0, 0)]
    assert upstream.failures == {("openai", "upstream_unreachable"): 1}


async def test_a_kept_alive_connection_dropped_after_the_provider_worked_is_not_sent_again(
    upstream: Upstream,
) -> None:
    """Past the idle-close window the provider may have done the work: a second try could be
    billed to the operator twice, so the failure is the client's 502."""
    scripted = await provider(
        lambda connection, number: "work-then-close" if number == 1 else "answer"
    )
    assert await send(upstream, scripted) == 200
    with pytest.raises(UpstreamUnavailable):
        await send(upstream, scripted)
    assert scripted.received == [(0, 0), (0, 1)]


async def test_the_second_try_is_the_only_one(upstream: Upstream) -> None:
    """A new connection that fails too is the client's 502: one more try, never a loop."""
    scripted = await provider(
        lambda connection, number: "answer" if (connection, number) == (0, 0) else "close"
    )
    assert await send(upstream, scripted) == 200
    with pytest.raises(UpstreamUnavailable):
        await send(upstream, scripted)
    assert scripted.received == [(0, 0), (0, 1), (1, 0)]
    assert upstream.failures == {("openai", "upstream_unreachable"): 1}
