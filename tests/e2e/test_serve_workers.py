"""`tollgate serve --workers N`: several gateway processes on one port and one database.

A real `python -m tollgate serve --workers 2` (the supervisor and its two worker processes), on
SQLite and on PostgreSQL, with the official openai SDK as client and the simulator upstream.

Every request here costs exactly one cent, whatever the timing: the model's price is overridden
to output tokens only, and the simulator produces exactly the `max_tokens` the hold was sized
for, so a hold equals its charge. A balance of N cents then admits exactly N requests, however
the requests interleave across the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Sim
from tests.e2e.test_billing_cost import cost_comment, header_nanos
from tests.support.accounts import seed_account
from tests.support.crash_books import snapshot, usage_entries
from tests.support.gateway_process import Target, gateway_target, inherited_env
from tests.support.server import free_port
from tollgate.billing.ledger import RECOVERY_NOTE

MODEL = "gpt-4o-mini"
OUTPUT_TOKENS = 10
CENT = 10**7  # nano-dollars
# $1,000 per million output tokens, nothing for input: 10 output tokens cost exactly one cent.
PRICES = f"""
[billing.price_overrides."openai/{MODEL}"]
provider = "openai"
context_window = 128000
max_output_tokens = 16384
input = "0"
output = "1000"
"""
EXACT = f"[sim output-tokens={OUTPUT_TOKENS}]"
SLOW = "[sim output-tokens=50 chunks=50 chunk-delay-ms=200]"  # about 10 s per stream


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Target]:
    """The store, and the whole environment of the `tollgate serve` processes started on it."""
    with gateway_target(request.param, tmp_path, sim.url, pg_hold_ttl=3) as settings:
        yield Target(settings.database_url, {**inherited_env(), **settings.env})


def listening(port: int) -> int:
    """How many sockets listen on `port` (IPv4 loopback), from /proc/net/tcp."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local_and_state = (row.split()[1:4:2] for row in rows)
    return sum(
        1 for local, state in local_and_state if local.endswith(f":{port:04X}") and state == "0A"
    )


class Workers:
    """`python -m tollgate serve --workers N` as a child process, on a port of its own."""

    def __init__(self, target: Target, tmp_path: Path, count: int, config_text: str) -> None:
        self.count, self.port = count, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "tollgate.toml"
        config.write_text(config_text)
        self.log = tmp_path / "workers.log"
        command = ["serve", "--workers", str(count), "--port", str(self.port), "-c", str(config)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollgate", *command],
                env=target.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_serving()

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def wait_serving(self, timeout: float = 90) -> None:
        """Until every worker listens: each listens only once its start-up is complete."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the supervisor exited:\n{self.tail()}")
            if listening(self.port) == self.count and len(self.workers()) == self.count:
                return
            time.sleep(0.05)
        raise AssertionError(f"the workers did not all start:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                for pid in self.workers():
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=30)


StartWorkers = Callable[..., Workers]


@pytest.fixture
def start(target: Target, tmp_path: Path) -> Iterator[StartWorkers]:
    started: list[Workers] = []

    def make(count: int = 2, config_text: str = PRICES) -> Workers:
        workers = Workers(target, tmp_path, count, config_text)
        started.append(workers)
        return workers

    yield make
    for workers in started:
        workers.kill()


async def one_request(base: str, token: str) -> int:
    client = openai.AsyncOpenAI(base_url=base, api_key=token, max_retries=0, timeout=60)
    async with client:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to ten. {EXACT}"}],
                max_tokens=OUTPUT_TOKENS,
            )
        except openai.APIStatusError as exc:
            assert exc.status_code == 402, exc.response.text
            assert exc.body["code"] == "insufficient_credits"  # type: ignore[index]
            return 0
        assert raw.parse().usage.completion_tokens == OUTPUT_TOKENS  # type: ignore[union-attr]
        return header_nanos(raw.headers, "cf-aig-cost")


# SQLite only for now: on PostgreSQL, 90 concurrent admissions fill both workers' pools (20
# connections each) while CI's other worker may run the 3-ledger concurrency tests, past the
# shared server's 100 connections. Exact admission across processes on PostgreSQL is covered by
# tests/billing/test_ledger_concurrency.py.
@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_workers_share_the_port_and_admit_exactly_what_the_balance_pays_for(
    start: StartWorkers, target: Target
) -> None:
    workers = start(2)
    assert len(set(workers.workers())) == 2
    account = seed_account(target.database_url, credits_cents=30, name="workers")
    base = f"{workers.url}/v1/{account.account_id}/default/openai"

    async def burst() -> list[int]:
        return await asyncio.gather(*(one_request(base, account.token) for _ in range(90)))

    costs = asyncio.run(burst())
    assert sorted(costs, reverse=True)[:31] == [CENT] * 30 + [0]
    # Read the books once the workers are stopped: an answer may go out before its settlement's
    # batch commits (up to `billing.settle_interval_ms` later), which another process (this
    # test) cannot see until then; the drain writes every batch and gives the leases back.
    assert workers.stop() == 0
    assert "Traceback" not in workers.tail()
    books, open_holds = snapshot(target.database_url, account.account_id)
    assert open_holds == [] and books.held_nanos == 0 and books.leased_nanos == 0
    assert books.balance_nanos == 0
    assert len(usage_entries(target.database_url, account.account_id)) == 30


def stream(base: str, token: str, under_way: threading.Event) -> tuple[int | None, bool]:
    """A slow stream: (the cost its client was shown, or None if it broke; estimated?).
    `under_way` is set at its first chunk: the request was admitted and forwarded."""
    with httpx.Client(timeout=120) as client:
        try:
            with client.stream(
                "POST",
                f"{base}/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Tell a story. {SLOW}"}],
                    "max_tokens": 50,
                    "stream": True,
                },
            ) as response:
                chunks = response.iter_bytes()
                body = next(chunks)
                under_way.set()
                body += b"".join(chunks)
        except httpx.HTTPError:
            return None, False
        finally:
            under_way.set()  # (also when it failed before: the test then fails on its counts)
    if b"data: [DONE]" not in body:
        return None, False
    cost, _remaining, estimated = cost_comment(body)
    return cost, estimated


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_a_killed_worker_is_replaced_and_its_siblings_requests_are_billed_exactly(
    start: StartWorkers, target: Target
) -> None:
    """The replacement's start-up recovers only the dead worker's requests: the streams its
    sibling is still serving finish and are charged exactly what their clients saw, once.
    (SQLite, where a lone gateway's start-up would resolve every open request as abandoned;
    on PostgreSQL start-up only ever resolves expired holds.) The catalog's own prices: a
    broken stream is charged its prompt's cost, which the exact-cent prices make zero."""
    workers = start(2, config_text="")
    victim, survivor = workers.workers()
    account = seed_account(target.database_url, credits_cents=10_000, name="kill a worker")
    base = f"{workers.url}/v1/{account.account_id}/default/openai"

    started = [threading.Event() for _ in range(8)]
    with ThreadPoolExecutor(len(started)) as pool:  # one thread per stream, all at once
        running = [pool.submit(stream, base, account.token, event) for event in started]
        for event in started:  # every stream is under way
            assert event.wait(timeout=120)
        os.kill(victim, signal.SIGKILL)
        results = [future.result() for future in running]
    finished = [cost for cost, _ in results if cost is not None]
    assert all(not estimated for _, estimated in results)
    # The kernel spread the eight connections over both workers' sockets (by a hash of each
    # connection's addresses: 8 on one side happens once in 128 runs).
    assert 0 < len(finished) < len(results), results
    workers.wait_serving()  # the supervisor started a replacement
    assert survivor in workers.workers() and victim not in workers.workers()

    entries = usage_entries(target.database_url, account.account_id)
    books, open_holds = snapshot(target.database_url, account.account_id)
    # The replacement read the dead worker's journal at start-up: each broken stream is charged
    # its estimate, once, and the dead worker's lease is given back.
    assert open_holds == [] and books.held_nanos == 0
    assert len(entries) == len(results)
    recovered = [e for e in entries if e.note == RECOVERY_NOTE]
    assert len(recovered) == len(results) - len(finished)
    charged = sorted(-e.amount_nanos for e in entries if e.note != RECOVERY_NOTE)
    assert charged == sorted(finished)  # the survivor's streams: exactly what clients saw
    assert workers.stop() == 0
    # The live workers may hold a credit lease until they stop; then none is left, the dead
    # worker's included.
    assert snapshot(target.database_url, account.account_id)[0].leased_nanos == 0


@pytest.mark.parametrize("target", ["sqlite"], indirect=True)
def test_a_second_gateway_on_the_port_is_refused_and_sigterm_stops_every_worker(
    start: StartWorkers, target: Target
) -> None:
    """`SO_REUSEPORT` would let any process of this user share the port; the supervisor checks
    first, so a second `tollgate serve` fails instead of silently taking half the traffic."""
    workers = start(2)
    second = subprocess.run(
        [sys.executable, "-m", "tollgate", "serve", "--workers", "2", "--port", str(workers.port)],
        env=target.env,
        capture_output=True,
        timeout=120,
    )
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{workers.port}" in second.stderr.decode()
    assert listening(workers.port) == 2

    pids = workers.workers()
    assert workers.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert listening(workers.port) == 0
