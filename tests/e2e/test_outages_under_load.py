"""PostgreSQL and Redis going away while requests are in flight, then coming back.

A gateway (served in this process, on a real socket) takes a steady load from clients of the
official openai SDK in threads, streams and plain answers mixed, each answer kept in flight for
tens of milliseconds by the simulator. Mid-load the test cuts the gateway's connection to a
dependency (a TCP relay it controls: every open connection dropped and new ones refused, as a
restart does; the shared servers are never touched), keeps the load on through the outage,
restores the relay and lets the load run on.

PostgreSQL (`docs/operations.md`, "PostgreSQL down or restarted"): requests that cannot write
their hold are refused with 503 `ledger_unavailable` and never reach the provider (fail closed);
requests already forwarded are answered, and those that end while the database is away are
settled once it is back (`tollgate.billing.deferred`); the gateway serves again by itself.
Afterwards no hold is open, the books balance (`check_invariants`), the provider received
exactly the requests that were held and answered, each was charged once for its measured usage
(never crash recovery's estimate), and every cost a client was shown is what it was charged.

Redis ("Redis down"): the rate limit and the response cache fall back to this process, no
request fails for it, and billing is untouched.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.test_billing_cost import cost_comment, header_nanos
from tests.e2e.test_cache import fresh_redis_prefix
from tests.support.accounts import Seeded, seed_account
from tests.support.crash_books import snapshot
from tests.support.databases import fresh_postgres_database
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import serve_in_thread
from tests.support.tcp_proxy import TcpProxy
from tollgate.app import create_app
from tollgate.providers.registry import PROVIDERS
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app
from tollgate.store.holds import Hold
from tollgate.store.snapshot import AccountSnapshot

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

CLIENTS = 6  # threads, each with its own SDK client, sending one request after another
MODEL = "gpt-4o-mini"
SIM = {"x-sim-latency-ms": "30", "x-sim-chunk-delay-ms": "5", "x-sim-output-tokens": "12"}
REDIS_TARGET = ("127.0.0.1", 6379)
# An answer shows its cost, unless the database was away when it ended: it is charged later.
ANSWERED = {"200", "200 stream", "200, cost to follow", "200 stream, cost to follow"}


@dataclass
class Outcomes:
    """What the clients saw: status counts, and the costs shown with each answer."""

    statuses: Counter[str] = field(default_factory=Counter)
    shown_nanos: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self) -> int:
        return sum(n for status, n in self.statuses.items() if status in ANSWERED)

    def cost_to_follow(self) -> int:
        return sum(n for status, n in self.statuses.items() if "cost to follow" in status)

    def add(self, status: str, shown: int | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            if shown is not None:
                self.shown_nanos.append(shown)


def one_request(client: openai.OpenAI, stream: bool, label: str, outcomes: Outcomes) -> None:
    chat = client.chat.completions
    prompt = [{"role": "user", "content": f"request {label}: is the ledger there?"}]
    try:
        if stream:
            with chat.with_streaming_response.create(
                model=MODEL, messages=prompt, max_completion_tokens=12, stream=True
            ) as response:
                body = b"".join(response.iter_bytes())
            if b"data: [DONE]" not in body:
                outcomes.add(f"stream broke: {body[-200:]!r}")
                return
            if b": cf-aig-cost=" not in body:  # settled once the database is back
                outcomes.add("200 stream, cost to follow")
                return
            cost, _remaining, estimated = cost_comment(body)
            outcomes.add("200 stream", None if estimated else cost)
        else:
            raw = chat.with_raw_response.create(
                model=MODEL, messages=prompt, max_completion_tokens=12
            )
            if "cf-aig-cost" not in raw.headers:
                outcomes.add("200, cost to follow")
                return
            outcomes.add("200", header_nanos(raw.headers, "cf-aig-cost"))
    except openai.APIStatusError as refused:
        code = refused.body.get("code") if isinstance(refused.body, dict) else None
        outcomes.add(f"{refused.status_code} {code}")
    except Exception as broken:  # a cut stream, a dropped connection: counted, and the load goes on
        outcomes.add(f"failed: {type(broken).__name__}")


def load(client_for: Any, stop: threading.Event, outcomes: Outcomes) -> None:
    def loop(worker: int) -> None:
        client = client_for()
        n = 0
        while not stop.is_set():
            one_request(client, (n + worker) % 2 == 0, f"{worker}-{n}", outcomes)
            n += 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(loop, range(CLIENTS)))


@contextmanager
def running_load(client_for: Any) -> Iterator[Outcomes]:
    outcomes, stop = Outcomes(), threading.Event()
    thread = threading.Thread(target=load, args=(client_for, stop, outcomes), daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(timeout=60)


def sdk_client(url: str, account: Seeded, gateway: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1/{account.account_id}/{gateway}/openai",
        api_key=account.token,
        max_retries=0,
        default_headers=SIM,
    )


@dataclass
class Served:
    url: str
    database: str
    account: Seeded
    sim_url: str

    def upstream_requests(self) -> int:
        return len(httpx.get(f"{self.sim_url}/_sim/requests").json())

    def run_load_through_an_outage(self, relay: TcpProxy, gateway: str = "default") -> Outcomes:
        """Load for 1.5 s, the relay cut for 1.5 s, then forwarding again for 1.5 s."""
        with running_load(lambda: sdk_client(self.url, self.account, gateway)) as outcomes:
            time.sleep(1.5)
            relay.cut()
            time.sleep(1.5)
            relay.forward()
            at_restore = outcomes.answered()
            time.sleep(1.5)
        assert outcomes.answered() > at_restore, "nothing was answered after the outage"
        return outcomes

    def books_once_settled(self) -> tuple[AccountSnapshot, list[Hold]]:
        """The account's books (`check_invariants` passed) once no hold is open, or after 15 s.
        The open holds are the snapshot's own: a second read could miss a hold resolved (by a
        deferred settlement) between the two."""
        deadline = time.monotonic() + 15
        while True:
            books, _ = snapshot(self.database, self.account.account_id)
            still_open = [hold for hold in books.holds if hold.id not in books.resolutions]
            if not still_open or time.monotonic() > deadline:
                return books, still_open
            time.sleep(0.1)


@contextmanager
def served(tmp_path: Path, database: str, **env: str) -> Iterator[Served]:
    with ExitStack() as stack:
        account = seed_account(database, credits_cents=100_000)
        sim_url = stack.enter_context(serve_in_thread(create_sim_app()))
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": sim_url + PROVIDERS["openai"].sim_path,
                "TOLLGATE_PROVIDERS__OPENAI__API_KEY": "managed-openai-key",
                **env,
            }
        )
        url = stack.enter_context(serve_in_thread(create_app(settings)))
        yield Served(url, database, account, sim_url)


def assert_every_request_billed_once(
    gateway: Served, outcomes: Outcomes, books: AccountSnapshot, still_open: list[Hold]
) -> None:
    assert not still_open, f"{len(still_open)} holds still open"
    results = [books.resolutions[hold.id] for hold in books.holds]
    # A hold whose write landed as the connection broke belongs to a refused request: released.
    settled = [r for r in results if r.state == "settled"]
    assert all(r.charged_nanos == 0 for r in results if r.state == "released")
    # Every request the provider received was held first, and answered.
    assert gateway.upstream_requests() == len(settled) == outcomes.answered()
    # Each charged once, for its measured usage (none left to crash recovery's estimate).
    assert not any(r.estimated for r in settled)
    assert len(books.entries) == 1 + len(settled)  # the seed grant, then one usage entry each
    # Every cost a client was shown is what its request was charged; the rest were answered
    # while the database was away and charged once it was back.
    charged = Counter(r.charged_nanos for r in settled)
    shown = Counter(outcomes.shown_nanos)
    assert shown <= charged
    assert (charged - shown).total() == outcomes.cost_to_follow()


def test_postgresql_cut_under_load_fails_closed_then_recovers_losing_nothing(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        database = stack.enter_context(fresh_postgres_database())
        relay = TcpProxy()
        stack.callback(relay.close)
        relay.forward()
        via_relay = database.replace(":5432/", f":{relay.port}/")
        gateway = stack.enter_context(served(tmp_path, via_relay))

        outcomes = gateway.run_load_through_an_outage(relay)
        print(f"\nPostgreSQL cut under load: {dict(outcomes.statuses)}")
        assert set(outcomes.statuses) <= ANSWERED | {"503 ledger_unavailable"}, outcomes.statuses
        assert outcomes.statuses["503 ledger_unavailable"] > 0, "the outage was not felt"
        books, still_open = gateway.books_once_settled()
        assert_every_request_billed_once(gateway, outcomes, books, still_open)


def test_redis_cut_under_load_falls_back_to_this_process_and_billing_is_untouched(
    tmp_path: Path, postgres_url: str
) -> None:
    """The gateway counts a rate limit and caches answers in Redis; with Redis gone both fall
    back to this process (`docs/operations.md`, "Redis down"): no request fails for it."""
    with ExitStack() as stack:
        prefix = stack.enter_context(contextmanager(fresh_redis_prefix)())
        relay = TcpProxy(REDIS_TARGET)
        stack.callback(relay.close)
        relay.forward()
        redis_env = {
            "TOLLGATE_REDIS__URL": f"redis://127.0.0.1:{relay.port}/0",
            "TOLLGATE_REDIS__KEY_PREFIX": prefix,
        }
        gateway = stack.enter_context(served(tmp_path, postgres_url, **redis_env))
        cloudflare.Cloudflare(
            api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4"
        ).ai_gateway.create(
            account_id=gateway.account.account_id,
            id="limited",
            **{
                **REQUIRED_GATEWAY_FIELDS,
                "cache_ttl": 300,  # every answer is cached (each prompt is new: no hits)
                "rate_limiting_limit": 100_000,
                "rate_limiting_interval": 60,
            },
        )

        outcomes = gateway.run_load_through_an_outage(relay, gateway="limited")
        print(f"\nRedis cut under load: {dict(outcomes.statuses)}")
        assert set(outcomes.statuses) == {"200", "200 stream"}, outcomes.statuses
        books, still_open = gateway.books_once_settled()
        assert_every_request_billed_once(gateway, outcomes, books, still_open)
