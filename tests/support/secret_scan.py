"""Looking for planted secrets in everything a gateway leaves behind.

A `Planted` secret has a distinctive random core; the scan looks for that core (so a secret that
leaks cut short, or without its `Bearer ` or `sk-` prefix, is still found) and for its simple
encodings: base64 (standard and URL-safe, at each of the three byte alignments it can have inside a
longer encoded text, so `Basic base64(user:secret)` is caught too) and hex.

`Recorder` is an httpx transport that keeps every response a client received (status line,
headers, decoded body) as an `Output`, and hands the client an identical response, so official
SDKs run on it unchanged (`http_client=recorder.client()`, or `client2()` for `httpx2` SDKs).

The `*_outputs` functions read what a gateway left behind: every row of every table (SQLite or
PostgreSQL), Redis keys and values, the files under a directory, what a start-up that fails
raises and logs. `otlp_collector` keeps what a gateway's OpenTelemetry export sends; `serve`
runs `tollgate serve` as a subprocess, its stdout and stderr in files.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import httpx2
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.server import free_port, serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings

TOLLGATE = Path(sys.executable).parent / "tollgate"


def random_core() -> str:
    """16 random hex characters: no other text in a test run contains them by chance."""
    return secrets.token_hex(8)


def _base64_fragments(core: bytes) -> list[bytes]:
    """The part of any base64 text that encodes `core`, whatever bytes surround it: one fragment
    per alignment (the core starting at byte 0, 1 or 2 of a 3-byte group). Characters that also
    carry bits of the neighbouring bytes are left out."""
    fragments = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + core)
        first = -(-8 * shift // 6)  # the first character made of the core's bits only
        last = 8 * (shift + len(core)) // 6  # one past the last such character
        fragment = encoded[first:last]
        fragments += [fragment, fragment.replace(b"+", b"-").replace(b"/", b"_")]
    return fragments


@dataclass(frozen=True)
class Planted:
    """A secret fed to the gateway: `value` as configured or sent, `core` its distinctive part
    (what is searched for), `raw` any other byte form it has (a master key's decoded bytes)."""

    name: str
    value: str
    core: str
    raw: tuple[bytes, ...] = ()

    @classmethod
    def made(cls, name: str, prefix: str) -> Planted:
        """A new secret `{prefix}{core}-x9`: the suffix keeps the core out of any preview that
        shows a key's last characters."""
        core = random_core()
        return cls(name, f"{prefix}{core}-x9", core)

    def needles(self) -> list[tuple[str, bytes]]:
        core = self.core.encode()
        found = [("in clear", core), ("hex-encoded", core.hex().encode())]
        found += [("base64-encoded", fragment) for fragment in _base64_fragments(core)]
        found += [("raw bytes", raw) for raw in self.raw]
        return list(dict((needle, (kind, needle)) for kind, needle in found).values())


@dataclass
class Secrets:
    """Every secret of one run, by name."""

    by_name: dict[str, Planted] = field(default_factory=dict)

    def new(self, name: str, prefix: str) -> str:
        return self.add(Planted.made(name, prefix))

    def add(self, secret: Planted) -> str:
        self.by_name[secret.name] = secret
        return secret.value

    def token(self, name: str, issued: dict[str, Any]) -> str:
        """An account token from its creation response; its leading part is its public id."""
        token = str(issued["token"])
        return self.add(Planted(name, token, token.split(issued["id"], 1)[1]))


@dataclass(frozen=True)
class Output:
    """Something the gateway produced: `where` names it in a failure message."""

    where: str
    data: bytes


@dataclass
class Allowed:
    """Where a secret legitimately appears: (secret name, a substring of the output's `where`).
    E.g. a new token in the response that issues it."""

    places: list[tuple[str, str]] = field(default_factory=list)

    def add(self, secret: str, where: str) -> None:
        self.places.append((secret, where))

    def __contains__(self, found: tuple[Planted, Output]) -> bool:
        secret, output = found
        return any(secret.name == name and part in output.where for name, part in self.places)


def find_leaks(
    planted: Iterable[Planted], outputs: Iterable[Output], allowed: Allowed
) -> list[str]:
    """One line per (secret, output, encoding) found outside its allowed places, with context."""
    outputs = list(outputs)
    leaks = []
    for secret in planted:
        for output in outputs:
            if (secret, output) in allowed:
                continue
            for encoding, needle in secret.needles():
                at = output.data.find(needle)
                if at >= 0:
                    context = output.data[max(0, at - 80) : at + len(needle) + 40]
                    leaks.append(f"{secret.name} {encoding} in {output.where}: {context!r}")
    return leaks


def found_in(secret: Planted, outputs: Iterable[Output], where: str) -> bool:
    """Whether the secret's core is in an output whose `where` contains `where` (a check that
    the scan sees what it scans)."""
    needle = secret.core.encode()
    return any(where in output.where and needle in output.data for output in outputs)


def _recorded(module: Any, transport: Any, request: Any, outputs: list[Output]) -> Any:
    """Send `request` on `transport`, keep the response as an `Output`, return an identical one.
    `module` is `httpx` or `httpx2` (the anthropic SDK takes `httpx2` clients)."""
    response = transport.handle_request(request)
    try:
        raw = b"".join(response.stream)
    finally:
        response.close()
    # Decoded as a client would see it (content-encoding undone), for the scan.
    seen = module.Response(response.status_code, headers=response.headers, content=raw)
    head = "".join(f"{k}: {v}\n" for k, v in response.headers.multi_items())
    where = f"response to {request.method} {request.url.path} ({response.status_code})"
    outputs.append(Output(where, head.encode() + b"\n" + seen.content))
    return module.Response(
        response.status_code,
        headers=response.headers,
        stream=module.ByteStream(raw),
        request=request,
        extensions=response.extensions,
    )


class Recorder:
    """Keeps every response (status, headers, body) its clients receive as an `Output`."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self._transport = httpx.HTTPTransport()
        self._transport2 = httpx2.HTTPTransport()
        recorder = self

        class Transport(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                return _recorded(httpx, recorder._transport, request, recorder.outputs)  # type: ignore[no-any-return]

        class Transport2(httpx2.BaseTransport):
            def handle_request(self, request: httpx2.Request) -> httpx2.Response:
                return _recorded(httpx2, recorder._transport2, request, recorder.outputs)  # type: ignore[no-any-return]

        self._recording, self._recording2 = Transport(), Transport2()

    def client(self) -> httpx.Client:
        return httpx.Client(transport=self._recording, timeout=30)

    def client2(self) -> httpx2.Client:
        """For SDKs built on `httpx2` (anthropic)."""
        return httpx2.Client(transport=self._recording2, timeout=30)

    def close(self) -> None:
        self._transport.close()
        self._transport2.close()


# --- what a gateway left behind ---------------------------------------------------------------


def sqlite_outputs(path: Path) -> list[Output]:
    """Every row of every table, as text (the file's own bytes are read as a file too)."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            Output(
                f"the database table {table}",
                repr(db.execute(f'SELECT * FROM "{table}"').fetchall()).encode(),
            )
            for table in tables
        ]


async def postgres_outputs(url: str) -> list[Output]:
    """Every row of every table of the public schema; bytea values as their bytes."""
    connection = await asyncpg.connect(url)
    try:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        outputs = []
        for (table,) in tables:
            rows = await connection.fetch(f'SELECT * FROM "{table}"')
            data = b" ".join(
                value if isinstance(value, bytes) else repr(value).encode()
                for row in rows
                for value in row.values()
            )
            outputs.append(Output(f"the database table {table}", data))
        return outputs
    finally:
        await connection.close()


def redis_outputs(url: str, prefix: str) -> list[Output]:
    """Every key under `prefix` with its value; the keys are deleted (the Redis is shared)."""
    client = redis.Redis.from_url(url)
    try:
        readers: dict[bytes, Any] = {
            b"string": client.get,
            b"hash": client.hgetall,
            b"list": lambda key: client.lrange(key, 0, -1),
            b"set": client.smembers,
            b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        }
        outputs = []
        for key in client.scan_iter(match=f"{prefix}*"):
            value = readers.get(client.type(key), lambda _: None)(key)
            outputs.append(Output(f"the Redis key {key!r}", key + b" " + repr(value).encode()))
            client.delete(key)
        return outputs
    finally:
        client.close()


def directory_outputs(root: Path, when: str = "") -> list[Output]:
    """Every file under `root`. Read while the gateway runs, a file may go (a journal segment
    once its batch is committed): it is skipped."""
    outputs = []
    for path in sorted(root.rglob("*")):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            outputs.append(Output(f"the file {path}{when}", path.read_bytes()))
    return outputs


def failed_start_outputs(env: dict[str, str], database_url: str) -> list[Output]:
    """A start-up on a database that cannot be reached, in this process: the error it raises
    (what `tollgate serve` logs) with its traceback, and every log record meanwhile."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, root = Keep(logging.DEBUG), logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        app = create_app(load_settings(env={**env, "TOLLGATE_DATABASE_URL": database_url}))

        async def start() -> None:
            async with app:
                pass

        with pytest.raises(OSError) as failed:
            asyncio.run(start())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = "".join(traceback.format_exception(failed.value)) + repr(failed.value)
    text += "\n".join(f"{r.name}: {r.getMessage()}" for r in records)
    return [Output("a failed start-up's error and log", text.encode())]


# --- an OTLP collector ---------------------------------------------------------------------


@dataclass
class Collector:
    """An OTLP/HTTP endpoint that keeps every POST, its headers apart from its body."""

    url: str = ""
    posts: list[Output] = field(default_factory=list)


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    collector = Collector()

    async def traces(request: Request) -> Response:
        head = "".join(f"{k}: {v}\n" for k, v in request.headers.items()).encode()
        collector.posts.append(Output("the OTLP collector's request headers", head))
        collector.posts.append(Output("the OTLP collector's request body", await request.body()))
        return Response(b"{}", media_type="application/json")

    with serve_in_thread(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])) as url:
        collector.url = f"{url}/v1/traces"
        yield collector


# --- a gateway process ---------------------------------------------------------------------


@contextmanager
def serve(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`tollgate serve` until the block ends, then SIGTERM: a graceful shutdown, which writes
    every pending log."""
    port = free_port()
    with (tmp_path / "stdout.log").open("wb") as out, (tmp_path / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [str(TOLLGATE), "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    poller = httpx.Client(timeout=1)  # one client: polls cost next to no CPU while it starts

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "stderr.log").read_text()
        with contextlib.suppress(httpx.TransportError):
            return poller.get(f"{url}/readyz").status_code == 200
        return False

    try:
        wait_for(ready, "tollgate serve did not become ready", timeout=60, interval=0.1)
        yield url, process
    finally:
        poller.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(
    condition: Callable[[], bool], message: str, timeout: float = 10, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(interval)
