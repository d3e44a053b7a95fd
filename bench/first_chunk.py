"""A closed-loop streaming client that times the first chunk: what wrk cannot measure.

    taskset -c 0 .venv/bin/python bench/first_chunk.py --url http://127.0.0.1:P/... \
        --body '{...}' --header 'Authorization: Bearer ...' --connections 4 --seconds 8

Each of `--connections` keep-alive connections POSTs the body, reads the answer to its end and
POSTs again, until `--seconds` have passed (requests in flight then are finished, not cut).
Before each request a connection pauses a random time, up to `--spread-ms` before its first one
and up to `--pause-ms` before the others (seeded, the same every run): a paced stream takes the
same time every time, so connections started together would stay in step and every request would
queue behind the others' at the gateway. Per request it records, from just before the request is
written:

- `first_chunk_us`: until the first byte of the response body arrived (after the status line and
  headers; with chunked transfer encoding, the first non-empty chunk), i.e. the time to the first
  SSE event;
- `total_us`: until the body was complete.

A request counts as failed when the status is not 200, the body does not end the stream (no
`data: [DONE]`), the connection breaks or no answer comes within 30 s; the first failure is kept.
Prints one line `BENCH_JSON {...}` with the samples (in microseconds) and the counts. Raw asyncio
streams and a small HTTP/1.1 reader, so that the client's own cost is small and the same for
every arm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop

TIMEOUT_S = 30.0
STREAM_END = b"data: [DONE]"


@dataclass
class Tally:
    first_chunk_us: list[int] = field(default_factory=list)
    total_us: list[int] = field(default_factory=list)
    bad_statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    sample_error: str | None = None

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.sample_error is None:
            self.sample_error = detail[:500]


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], float | None, bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), when the first body byte
    arrived (perf_counter) and the body (chunked encoding decoded)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    first: float | None = None
    parts: list[bytes] = []
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                break
            if first is None:
                first = time.perf_counter()
            parts.append((await reader.readexactly(size + 2))[:-2])
    else:
        remaining = int(headers.get("content-length", "0"))
        while remaining > 0:
            data = await reader.read(remaining)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), remaining)
            if first is None:
                first = time.perf_counter()
            parts.append(data)
            remaining -= len(data)
    return status, headers, first, b"".join(parts)


async def connection(
    url: str, request: bytes, deadline: float, pauses: tuple[float, float], seed: int, tally: Tally
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection(host, port)
    pause = rng.uniform(0, pauses[0])
    try:
        while True:
            await asyncio.sleep(pause)
            pause = rng.uniform(0, pauses[1])
            if time.perf_counter() >= deadline:
                break
            sent = time.perf_counter()
            try:
                writer.write(request)
                status, headers, first, body = await asyncio.wait_for(
                    read_response(reader), TIMEOUT_S
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                tally.fail(type(exc).__name__, f"{type(exc).__name__}: {exc}")
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            done = time.perf_counter()
            if status != 200:
                tally.bad_statuses[str(status)] = tally.bad_statuses.get(str(status), 0) + 1
                tally.fail("status", f"HTTP {status}: {body.decode(errors='replace')}")
            elif STREAM_END not in body or first is None:
                tally.fail(
                    "incomplete", f"no `data: [DONE]`: {body[-300:].decode(errors='replace')}"
                )
            else:
                tally.first_chunk_us.append(round(1e6 * (first - sent)))
                tally.total_us.append(round(1e6 * (done - sent)))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def build_request(url: str, body: str, headers: list[str]) -> bytes:
    parts = urlsplit(url)
    payload = body.encode()
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def run(args: argparse.Namespace) -> dict[str, Any]:
    request = build_request(args.url, args.body, args.header)
    tally = Tally()
    started = time.perf_counter()
    deadline = started + args.seconds
    pauses = (args.spread_ms / 1000, args.pause_ms / 1000)
    await asyncio.gather(
        *(
            connection(args.url, request, deadline, pauses, i, tally)
            for i in range(args.connections)
        )
    )
    elapsed = time.perf_counter() - started
    return {
        "requests": len(tally.first_chunk_us),
        "duration_us": round(1e6 * elapsed),
        "first_chunk_us": tally.first_chunk_us,
        "total_us": tally.total_us,
        "bad_statuses": tally.bad_statuses,
        "errors": tally.errors,
        "failed": sum(tally.errors.values()),
        "sample_error": tally.sample_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--spread-ms", type=float, default=0.0, help="first pause, at most")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="later pauses, at most")
    args = parser.parse_args()
    print("BENCH_JSON " + json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
