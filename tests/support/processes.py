"""Real processes for tests: `python -m tollgate serve` (or any `python -m MODULE ...` that takes
`--port`) as child processes, each on a loopback port of its own, configured only by its
environment.

A child inherits the test's environment less every `TOLLGATE_*` variable and every provider key
variable, so what configures it is exactly what the test passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import free_port
from tollgate.providers.registry import PROVIDERS


@dataclass
class ChildProcess:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    keys = {row.key_env for row in PROVIDERS.values()}
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_") and k not in keys
    }
    return {**inherited, **settings}


def start(command: list[str], settings: Mapping[str, str], log: Path) -> ChildProcess:
    """Start `python -m COMMAND... --port P` (`["tollgate", "serve"]`), not awaited: see
    `wait_ready`."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *command, "--port", str(port)],
            env=child_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ChildProcess(f"http://127.0.0.1:{port}", process, log)


def wait_ready(child: ChildProcess, path: str, timeout: float = 180) -> None:
    """Until GET `path` answers 200 (for a gateway, /readyz: start-up is complete)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise AssertionError(f"{child.url} exited at start-up:\n{child.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{child.url}{path}", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{child.url} did not become ready:\n{child.tail()}")


def stop(child: ChildProcess, timeout: float = 30) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it is still there after `timeout`."""
    if child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(timeout=timeout)


@contextmanager
def running(
    commands: list[tuple[list[str], Mapping[str, str], Path]], ready_path: str
) -> Iterator[list[ChildProcess]]:
    """Start every command at once (their start-ups overlap), wait until each is ready, and
    stop them all when the block exits, whatever happened."""
    children: list[ChildProcess] = []
    try:
        for command, settings, log in commands:
            children.append(start(command, settings, log))
        for child in children:
            wait_ready(child, ready_path)
        yield children
    finally:
        for child in children:
            stop(child)
