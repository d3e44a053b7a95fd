"""The `--workers N` supervisor's own rules (serve_workers.py), with trivial child commands in
place of gateways: the gateway side is tested end to end in tests/e2e/test_serve_workers.py."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from tollgate import serve_workers
from tollgate.serve_workers import Supervisor


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_workers, "FIRST_PAUSE", 0.01)


def test_workers_that_keep_dying_at_start_stop_the_supervisor_with_an_error() -> None:
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor(2, failing, dict(os.environ))
    assert supervisor.run() == 1
    assert supervisor.quick_deaths == serve_workers.GIVE_UP_AFTER
    assert supervisor.workers == {}  # the other worker was stopped and waited for


def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor(2, sleeper, dict(os.environ))
    seen: list[int] = []

    def kill_one_then_stop() -> None:
        while len(supervisor.workers) < 2:
            time.sleep(0.01)
        first = sorted(supervisor.workers)
        os.kill(first[0], signal.SIGKILL)
        while sorted(supervisor.workers) == first or len(supervisor.workers) < 2:
            time.sleep(0.01)
        seen.extend(supervisor.workers)
        os.kill(os.getpid(), signal.SIGTERM)  # to the supervisor, which forwards it

    threading.Thread(target=kill_one_then_stop, daemon=True).start()
    assert supervisor.run() == 0
    assert len(seen) == 2 and supervisor.workers == {}
    assert all(not os.path.exists(f"/proc/{pid}") for pid in seen)
    assert signal.getsignal(signal.SIGTERM) is not supervisor._stop  # handlers restored
