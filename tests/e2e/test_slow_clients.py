"""Slow and oversized clients against the server `tollgate serve` runs (http_protocol.py): a
request whose headers or body trickle in is dropped within its deadline (408 or a closed
connection), floods of headers are cut before the application runs, idle connections are
closed, and meanwhile normal requests on other connections are served."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway, Sim, provider_env
from tests.support.accounts import seed_account
from tests.support.server import free_port
from tollgate.app import TollgateApp, create_app
from tollgate.http_protocol import BODY_GRACE_SECONDS, http_options
from tollgate.settings import ServerSettings, load_settings

TIMEOUT = 1.0  # the header, body and keep-alive deadlines of these tests' gateway
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
SLACK = 1.5  # scheduling slack on a busy machine


@contextmanager
def serve_like_tollgate_serve(app: TollgateApp, server_settings: ServerSettings) -> Iterator[str]:
    """uvicorn in a thread, with the options `tollgate serve` uses (cli.py)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **http_options(server_settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def served(tmp_path: Path, sim: Sim) -> Iterator[Gateway]:
    database_url = f"sqlite:///{tmp_path / 'gw.db'}"
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_SERVER__HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
            "TOLLGATE_SERVER__BODY_TIMEOUT_SECONDS": str(TIMEOUT),
            "TOLLGATE_SERVER__KEEP_ALIVE_TIMEOUT_SECONDS": str(TIMEOUT),
            "TOLLGATE_SERVER__MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "TOLLGATE_SERVER__MAX_HEADER_COUNT": str(MAX_HEADERS),
            **provider_env(sim.url),
        }
    )
    account = seed_account(database_url)
    sim.clear()
    with serve_like_tollgate_serve(create_app(settings), settings.server) as url:
        yield Gateway(url, database_url, account)


def connect(gateway: Gateway) -> socket.socket:
    port = int(gateway.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def chat_head(gateway: Gateway, content_length: int, path: str | None = None) -> bytes:
    path = path or f"/v1/{gateway.account.account_id}/default/openai/chat/completions"
    return (
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\n"
        f"authorization: Bearer {gateway.account.token}\r\n"
        f"content-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    ).encode()


def served_normally(gateway: Gateway) -> None:
    """A normal chat call on its own connection, with the official SDK."""
    client = openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base("openai"), max_retries=0
    )
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
    )
    assert reply.choices[0].message.content


def trickle_until_answered(sock: socket.socket, data: bytes, gateway: Gateway) -> bytes:
    """Send `data` a byte every 0.2 s, serving a normal request on the side, until the gateway
    answers or closes; returns what it sent back (up to the close)."""
    answer = b""
    for index, byte in enumerate(data):
        if index == 2:
            served_normally(gateway)  # another connection is served meanwhile
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed under us: read what it said
            break
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_a_body_that_trickles_in_gets_408_and_the_connection_closes(
    served: Gateway, sim: Sim
) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    with connect(served) as sock:
        sock.sendall(chat_head(served, len(body)))
        started = time.monotonic()
        answer = trickle_until_answered(sock, body.encode(), served)
        elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(payload)["error"]  # OpenAI's format: the endpoint called
    assert error["code"] == "request_timeout" and "server.body_timeout_seconds" in error["message"]
    assert len(sim.requests()) == 1  # only the normal request reached the upstream


def test_a_body_that_stops_halfway_gets_408(served: Gateway, sim: Sim) -> None:
    with connect(served) as sock:
        sock.sendall(chat_head(served, 100) + b'{"model": "gpt-4o-mini", ')
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed
    assert sim.requests() == []


def test_headers_that_trickle_in_get_408_and_the_connection_closes(served: Gateway) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /v1/x/default/openai/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        started = time.monotonic()
        answer = trickle_until_answered(sock, b"x-slow: " + b"a" * 200, served)
        elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
    assert b"connection: close" in answer


def test_a_connection_that_sends_nothing_is_closed(served: Gateway) -> None:
    with connect(served) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed without a word: no request had begun
        assert TIMEOUT * 0.9 <= time.monotonic() - started <= TIMEOUT + SLACK


def test_an_idle_kept_alive_connection_is_closed(served: Gateway) -> None:
    request = (
        f"GET /v1/{served.account.account_id}/default/compat/models HTTP/1.1\r\nhost: gw\r\n"
        f"authorization: Bearer {served.account.token}\r\n\r\n"
    ).encode()
    with connect(served) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        started = time.monotonic()
        while sock.recv(65536):  # the rest of the answer, then the close
            pass
        assert TIMEOUT * 0.9 <= time.monotonic() - started <= TIMEOUT + SLACK


def test_a_slow_body_on_another_route_is_cut_at_the_servers_deadline(served: Gateway) -> None:
    """The management API reads its own bodies: the server closes the connection after the
    body deadline plus its grace, whatever the route."""
    path = f"/client/v4/accounts/{served.account.account_id}/ai-gateway/gateways"
    with connect(served) as sock:
        sock.sendall(chat_head(served, 100, path))
        started = time.monotonic()
        deadline = started + TIMEOUT + BODY_GRACE_SECONDS + SLACK
        closed = False
        while time.monotonic() < deadline and not closed:
            readable, _, _ = select.select([sock], [], [], 0.3)
            try:
                if readable:
                    closed = not sock.recv(65536)
                else:
                    sock.sendall(b" ")  # a byte of body every 0.3 s
            except OSError:
                closed = True
        elapsed = time.monotonic() - started
    assert closed, "the slow body held the connection past the deadline"
    assert elapsed >= TIMEOUT + BODY_GRACE_SECONDS * 0.9, elapsed


def test_a_head_that_keeps_growing_is_cut_before_the_application(served: Gateway, sim: Sim) -> None:
    cap = 2 * MAX_HEADER_BYTES + 8 * 1024
    with connect(served) as sock:  # a head that never ends, a little past the server's cap
        sock.sendall(chat_head(served, 0)[:-2] + b"x-huge: " + b"h" * cap)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b"connection: close" in answer and b"too big" in answer
    assert sim.requests() == []
    served_normally(served)


def test_a_flood_of_headers_is_cut_before_the_application(served: Gateway, sim: Sim) -> None:
    flood = "".join(f"x-many-{i}: 1\r\n" for i in range(2 * MAX_HEADERS + 1))
    with connect(served) as sock:
        sock.sendall(chat_head(served, 0).replace(b"\r\n\r\n", f"\r\n{flood}\r\n".encode()))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b"too many headers" in answer
    assert sim.requests() == []
    served_normally(served)


def test_a_large_body_sent_with_its_headers_is_served(served: Gateway, sim: Sim) -> None:
    """The head's cap counts the head only, though one read may carry the body with it."""
    long_text = "many words " * 100_000  # ~1 MB, far past the head's cap of 12 KiB
    served_normally(served)
    client = openai.OpenAI(
        api_key=served.account.token, base_url=served.base("openai"), max_retries=0
    )
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": long_text}]
    )
    assert reply.choices[0].message.content
    assert len(sim.requests()) == 2


def test_headers_past_the_limit_but_under_the_servers_cap_get_the_endpoints_431(
    served: Gateway, sim: Sim
) -> None:
    extra = "".join(f"x-more-{i}: 1\r\n" for i in range(MAX_HEADERS)) + "connection: close\r\n"
    with connect(served) as sock:  # 25 headers: over the limit, under the server's cap
        sock.sendall(chat_head(served, 0).replace(b"\r\n\r\n", f"\r\n{extra}\r\n".encode()))
        answer = read_all(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert json.loads(payload)["error"]["code"] == "request_headers_too_large"
    assert sim.requests() == []
