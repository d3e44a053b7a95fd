"""A real gateway process (`tollgate serve`) for tests that kill, stop and restart it.

`GatewayProcess` starts one on a port of its own and waits until `/readyz` answers (start-up,
with its crash recovery, is complete). By default it is `python -m tollgate serve`, a fresh
interpreter; `PreloadedServe` forks it instead from a process that imported tollgate once
(`tests.support.serve_zygote`), for tests that restart it many times. `Target` is the store a
series of gateways share, with the settings each is started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import httpx
import httpx2
import openai

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import provider_env
from tests.support.accounts import Seeded
from tests.support.databases import fresh_postgres_database
from tests.support.server import free_port
from tollgate.providers.registry import PROVIDERS

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class Target:
    database_url: str
    env: dict[str, str]  # the gateway process's TOLLGATE_* settings

    @property
    def postgres(self) -> bool:
        return self.database_url.startswith("postgresql")


@contextlib.contextmanager
def gateway_target(
    engine: str, directory: Path, sim_url: str, *, pg_hold_ttl: int, **settings: str
) -> Iterator[Target]:
    """A store for `engine` ("sqlite": a file in `directory`; "postgresql": a fresh database,
    dropped afterwards) and the settings of the gateways started on it: providers at the
    simulator, and on PostgreSQL a hold TTL of `pg_hold_ttl` seconds (start-up recovery there
    resolves only expired holds). `settings`: more TOLLGATE_* variables."""
    env = {
        "TOLLGATE_DATA_DIR": str(directory / "data"),
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_LOG_LEVEL": "warning",
        **provider_env(sim_url),
        **settings,
    }
    if engine == "sqlite":
        url = f"sqlite:///{directory / 'gateway.db'}"
        yield Target(url, {**env, "TOLLGATE_DATABASE_URL": url})
        return
    with fresh_postgres_database() as url:  # its own: the tests check every hold in it
        ttl = {"TOLLGATE_BILLING__HOLD_TTL_SECONDS": str(pg_hold_ttl)}
        yield Target(url, {**env, **ttl, "TOLLGATE_DATABASE_URL": url})


def inherited_env() -> dict[str, str]:
    """This process's environment without tollgate's settings or any provider key."""
    keys = {row.key_env for row in PROVIDERS.values()}
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_") and k not in keys}


class Process(Protocol):
    """What a test needs of a gateway process (a `subprocess.Popen` has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def __call__(self, args: list[str], env: dict[str, str], log: Path) -> Process: ...


def fresh_interpreter(args: list[str], env: dict[str, str], log: Path) -> Process:
    """`python -m tollgate {args}`, as an operator runs it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tollgate", *args],
            env={**inherited_env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class PreloadedServe:
    """Forks `tollgate serve` children from `tests.support.serve_zygote` (a launcher)."""

    def __init__(self) -> None:
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "tests.support.serve_zygote"],
            cwd=REPOSITORY,
            env=inherited_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lock = threading.Lock()  # one question and its answer at a time
        assert self._ask(None) == {"ready": True}, "the preloaded server did not start"

    def _ask(self, question: dict[str, object] | None) -> dict[str, object]:
        stdin, stdout = self._pipes()
        with self._lock:
            if question is not None:
                stdin.write(json.dumps(question).encode() + b"\n")
                stdin.flush()
            line = stdout.readline()
        assert line, "the preloaded server exited"
        answer: dict[str, object] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self._zygote.stdin is not None and self._zygote.stdout is not None
        return self._zygote.stdin, self._zygote.stdout

    def __call__(self, args: list[str], env: dict[str, str], log: Path) -> Process:
        answer = self._ask({"op": "spawn", "args": args, "env": env, "log": str(log)})
        pid = answer["pid"]
        assert isinstance(pid, int)
        return ForkedProcess(self, pid)

    def returncode(self, pid: int, timeout: float) -> int | None:
        returncode = self._ask({"op": "wait", "pid": pid, "timeout": timeout})["returncode"]
        assert returncode is None or isinstance(returncode, int)
        return returncode

    def close(self) -> None:
        """Kills the children still running, and the zygote."""
        stdin, _ = self._pipes()
        stdin.close()
        self._zygote.wait(timeout=30)


class ForkedProcess:
    """A child of the preloaded server, with the part of `Popen`'s interface tests use."""

    def __init__(self, server: PreloadedServe, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._reap(0)

    def wait(self, timeout: float | None = None) -> int:
        returncode = self._reap(60.0 if timeout is None else timeout)
        if returncode is None:
            raise subprocess.TimeoutExpired(f"gateway {self.pid}", timeout or 60.0)
        return returncode

    def _reap(self, timeout: float) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


STARTED: list[Process] = []  # every gateway started; a test's teardown kills those still running


def kill_leftovers() -> None:
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


class GatewayProcess:
    """`tollgate serve` as a child process, on a port of its own, ready when constructed."""

    def __init__(
        self, target: Target, log: Path, *, launcher: Launcher = fresh_interpreter
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        started = time.monotonic()
        self.process = launcher(["serve", "--port", str(self.port)], target.env, log)
        STARTED.append(self.process)
        self._wait_ready()
        self.start_seconds = time.monotonic() - started  # spawn to ready

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the gateway exited at start-up:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return  # start-up (with its recovery) is complete
            time.sleep(0.02)
        self.process.kill()
        raise AssertionError(f"the gateway did not become ready:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        """A clean shutdown: drained, it exits 0."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.tail()
        assert "Traceback" not in self.log.read_text(errors="replace"), self.tail()

    def client(
        self, account: Seeded, *, timeout: float = 30, http: httpx2.Client | None = None
    ) -> openai.OpenAI:
        """The official SDK on the account's default gateway. `http`: a connection pool to
        share (an SDK client of its own loads a TLS context: a quarter second on a busy
        machine, for a gateway that speaks plain HTTP)."""
        return openai.OpenAI(
            api_key=account.token,
            base_url=f"{self.url}/v1/{account.account_id}/default/openai",
            max_retries=0,
            timeout=timeout,
            http_client=http,
        )
