"""``python -m tollgate.sim`` (and ``tollgate sim``): serve the simulator on its own.

Prints the base URL of every provider, then serves until interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from tollgate.sim.app import create_sim_app
from tollgate.sim.server import (
    base_url_of,
    bind_socket,
    provider_base_urls,
    uvicorn_config,
)

DEFAULT_PORT = 8788


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate sim",
        description="Serve the upstream simulator (OpenAI, Anthropic, Gemini wire formats).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0 = any free)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator in the foreground. Returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"tollgate sim: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    base_url = base_url_of(sock)
    print(f"tollgate upstream simulator at {base_url}")
    for provider, url in provider_base_urls(base_url).items():
        print(f"  {provider:<17} {url}")
    print(f"  {'recorded requests':<17} {base_url}/_sim/requests", flush=True)
    server = uvicorn.Server(uvicorn_config(create_sim_app()))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C after its graceful shutdown; stopping is what the user asked.
        pass
    finally:
        sock.close()
    return 0
