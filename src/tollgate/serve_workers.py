"""`tollgate serve --workers N`: N gateway processes serving one port.

The supervisor (the process the operator started) claims the port, then does the work that must
happen once, alone, before any request: migrations, recovery of what a crashed earlier run left
open, and the sandbox's first account. It does it by starting the gateway and stopping it again
(`prepare`). Then it runs N workers, each `python -m tollgate serve --worker --port P`: a whole
gateway with its own event loop and its own listening socket on the port (`SO_REUSEPORT`). The
kernel spreads new connections evenly over the workers' sockets; one socket shared by all would
wake every idle worker for each connection and let the first awake take most of them. The
supervisor's own socket is bound but never listens, so it receives no connections: it only keeps
the port while workers come and go.

Why the workers do not resolve every open hold at start-up, as a lone SQLite gateway does: with
siblings on the same file, an open hold may be a live sibling's request in flight. A worker
resolves only expired holds and the journals of dead processes (whose locks it can take), as a
gateway on PostgreSQL does; the supervisor resolved the rest before any worker ran.

A worker that dies is started again, after a pause that doubles while workers keep dying soon
after they start; five such deaths in a row mean something is wrong with every worker (a
database that went away, a broken configuration), and the supervisor stops with an error.
SIGTERM or SIGINT stops the supervisor: every worker gets SIGTERM and drains its requests for up
to `server.shutdown_grace_seconds`, and the supervisor exits once all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from tollgate.sandbox import SandboxCredentials
from tollgate.settings import Settings

log = logging.getLogger("tollgate.workers")

QUICK_DEATH_SECONDS = 5.0  # a worker that dies sooner than this after starting counts as failing
GIVE_UP_AFTER = 5  # quick deaths in a row
FIRST_PAUSE, MAX_PAUSE = 0.5, 10.0  # before starting a worker again, doubling per quick death
_PR_SET_PDEATHSIG = 1


def prepare(settings: Settings) -> SandboxCredentials | None:
    """Start the gateway once and stop it: migrate, recover, create the sandbox account."""
    from tollgate.app import create_app

    async def start_and_stop() -> SandboxCredentials | None:
        async with create_app(settings) as application:
            return application.sandbox_credentials

    return asyncio.run(start_and_stop())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A worker gets SIGTERM if the supervisor dies (even by SIGKILL): no orphaned gateways."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    started: float


@dataclass
class Supervisor:
    """Runs `count` copies of `command` and keeps them running."""

    count: int
    command: Sequence[str]
    env: dict[str, str]
    workers: dict[int, Worker] = field(default_factory=dict)  # by pid
    stopping: bool = False
    quick_deaths: int = 0

    def run(self) -> int:
        """Until SIGTERM/SIGINT (exit 0) or workers that keep failing (exit 1)."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.count):
                self._start()
            while self.workers:
                pid, status = os.wait()
                worker = self.workers.pop(pid, None)
                if worker is None or self.stopping:
                    continue
                if not self._replace(worker, os.waitstatus_to_exitcode(status)):
                    self._stop()
                    self._wait_all()
                    return 1
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            list(self.command),
            env=self.env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.workers[process.pid] = Worker(process, time.monotonic())

    def _replace(self, dead: Worker, code: int) -> bool:
        """Start a worker in place of `dead`; False once workers keep dying as they start."""
        lived = time.monotonic() - dead.started
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
        log.warning(
            "gateway worker %d exited with %s after %.1f s; starting another",
            dead.process.pid,
            f"signal {-code}" if code < 0 else f"code {code}",
            lived,
        )
        if self.quick_deaths >= GIVE_UP_AFTER:
            log.error(
                "%d gateway workers in a row died within %.0f s of starting; stopping (the "
                "log above says why)",
                self.quick_deaths,
                QUICK_DEATH_SECONDS,
            )
            return False
        if self.quick_deaths:
            time.sleep(min(MAX_PAUSE, FIRST_PAUSE * 2 ** (self.quick_deaths - 1)))
        if not self.stopping:
            self._start()
        return True

    def _stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        self.stopping = True
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)

    def _wait_all(self) -> None:
        for worker in list(self.workers.values()):
            worker.process.wait()
        self.workers.clear()


def worker_command(port: int, config: str | None) -> list[str]:
    """How the supervisor starts one worker."""
    command = [sys.executable, "-m", "tollgate", "serve", "--worker", "--port", str(port)]
    return [*command, "--config", config] if config else command


def claim_port(host: str, port: int) -> socket.socket:
    """The supervisor's socket on `host:port` (port 0: the kernel picks one), which its workers
    bind too. It never listens.

    Any process of this user may join a port bound with `SO_REUSEPORT`, and a second
    `tollgate serve` would then silently share the first one's traffic. So the port is first
    bound without it, which fails with EADDRINUSE while another gateway (or anything else) has
    it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, port), family=family) as probe:
        port = probe.getsockname()[1]
    return bind_shared(host, port)


def bind_shared(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) on `host:port` that the supervisor's workers bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
