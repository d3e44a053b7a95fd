"""The paced upstream for bench/dataplane.py's first-chunk row: the canned OpenAI stream, one SSE
event at a time.

    taskset -c 0 .venv/bin/python bench/pacer.py --port P --interval-ms 20

nginx cannot pace a response (Debian's build has no echo module, and `limit_rate` paces bytes,
not events), so this small aiohttp server does it. It answers `POST /stream/v1/chat/completions`
(and `/v1/chat/completions`) with `upstream_mock.sse_stream()`: the status and headers at once, as
a provider does, then event i (0-based) at `(i + 1) * interval` after the request arrived, like a
model whose first token takes one interval and each next one another. Deadlines are fixed from
the arrival, so a late wake-up does not push every later event back. The body is the same bytes
as nginx's `/stream/v1` answer, so a relay must pass it through unchanged.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

import upstream_mock

EVENTS = [e + "\n\n" for e in upstream_mock.sse_stream().split("\n\n") if e]


async def paced_stream(request: web.Request) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    interval: float = request.app["interval_s"]
    await request.read()  # the body is not looked at: every request gets the same stream
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)  # a StreamResponse sends its headers now
    for i, event in enumerate(EVENTS):
        delay = arrived + (i + 1) * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await response.write(event.encode())
    await response.write_eof()
    return response


async def serve(port: int, interval_s: float) -> None:
    app = web.Application()
    app["interval_s"] = interval_s
    app.router.add_post("/stream/v1/chat/completions", paced_stream)
    app.router.add_post("/v1/chat/completions", paced_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until the runner terminates this process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
