"""Run the simulator in-process: ``async with SimServer() as sim: ... sim.base_url``.

uvicorn serves the app as a task on the running event loop, on a socket bound before the task
starts, so ``port=0`` picks a free port and ``base_url`` is known as soon as the block is entered.
Unlike ``uvicorn.Server.serve`` it installs no signal handlers: the host process (the gateway in
sandbox mode, a test run) keeps its own Ctrl-C behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType

import uvicorn

from tollgate.sim.app import create_sim_app
from tollgate.sim.recorder import SimRecorder

OPENAI_COMPATIBLE = (
    "groq",
    "grok",
    "mistral",
    "deepseek",
    "cerebras",
    "perplexity-ai",
    "openrouter",
    "workers-ai",
)
_STARTUP_TIMEOUT_S = 10.0
_BACKLOG = 2048


def provider_base_urls(sim_base_url: str) -> dict[str, str]:
    """The upstream base URL of every provider slug when the simulator is at ``sim_base_url``.

    OpenAI-compatible vendors all point at the simulated OpenAI API."""
    base = sim_base_url.rstrip("/")
    urls = {
        "openai": f"{base}/openai/v1",
        "anthropic": f"{base}/anthropic",
        "google-ai-studio": f"{base}/google",
    }
    urls.update({slug: f"{base}/openai/v1" for slug in OPENAI_COMPATIBLE})
    return urls


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Embedded: the host process owns the signals.
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound to ``host:port`` (``port=0``: a free port).

    It listens at once, so a client that connects between the bind and uvicorn's start waits in
    the backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(_BACKLOG)
    return sock


def base_url_of(sock: socket.socket) -> str:
    """``http://host:port`` for a bound socket (wildcard hosts shown as loopback)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: object, **overrides: object) -> uvicorn.Config:
    """The uvicorn settings the simulator runs with (quiet, no lifespan, no Server header)."""
    options: dict[str, object] = {
        "lifespan": "off",
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 1,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


class SimServer:
    """The simulator served by uvicorn on the current event loop.

    ``async with SimServer(host, port) as sim`` starts it; ``sim.base_url`` is
    ``"http://127.0.0.1:PORT"`` and ``sim.recorder`` sees every provider request. Leaving the block
    stops it (open streams get ``timeout_graceful_shutdown`` seconds to finish).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, recorder: SimRecorder | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.recorder = recorder if recorder is not None else SimRecorder()
        self.app = create_sim_app(self.recorder)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""

    async def start(self) -> None:
        """Bind, start serving and wait until uvicorn accepts connections."""
        if self._task is not None:
            raise RuntimeError("SimServer already started")
        self._socket = bind_socket(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self.base_url = base_url_of(self._socket)
        self._server = _EmbeddedServer(uvicorn_config(self.app))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        deadline = asyncio.get_running_loop().time() + _STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                await self.stop()
                raise RuntimeError("the simulator failed to start")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise TimeoutError("the simulator did not start in time")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None:
            server.should_exit = True
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def provider_base_urls(self) -> dict[str, str]:
        """``provider_base_urls(self.base_url)``."""
        return provider_base_urls(self.base_url)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
