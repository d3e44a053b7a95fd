"""A loopback cluster for tests: the simulator, N `tollgate serve` processes on one PostgreSQL
database and one Redis, behind the shipped deploy/nginx.conf; and the traffic a test drives
through it (`Run`: a fresh account per seed, bursts of concurrent chat completions).

Used by tests/deploy/test_cluster.py. Every process is real (`tests.support.processes`), and
configured the way an operator would: by environment variables.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import redis

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import provider_env
from tests.support.databases import fresh_postgres_database
from tests.support.nginx import render, running_nginx
from tests.support.processes import running
from tests.support.server import free_port
from tollgate.api.auth import PERMISSIONS
from tollgate.billing.ledger import check_invariants
from tollgate.operator import issue_token
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.migrate import migrate
from tollgate.store.snapshot import AccountSnapshot

REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECTIONS = 1_000  # the test's client pools: one connection per request of a burst
# The simulator (what `tollgate sim` serves), with idle connections kept longer than the
# gateway's upstream pool keeps them (30 s, tollgate.upstream). With uvicorn's default of 5 s, a
# request the gateway sends on a connection the simulator is closing gets a 502
# (`upstream_unreachable`: "Connection reset by peer"); reported, and not what this test is about.
SIMULATOR = [
    *("uvicorn", "tollgate.sim.app:create_sim_app", "--factory", "--host", "127.0.0.1"),
    *("--timeout-keep-alive", "60", "--lifespan", "off", "--no-access-log"),
    *("--log-level", "warning", "--no-server-header"),
]
WORDS = ("harbour", "ships", "lantern", "tide", "gull", "anchor", "rope", "keel", "mast", "reef")


@dataclass(frozen=True)
class Cluster:
    proxy: str  # nginx: every client request goes here
    gateways: list[str]  # each process directly (its own /metrics)
    database_url: str
    logs: Path  # nginx.out, gateway-N.log, sim.log

    def trouble(self) -> str:
        """nginx's alerts and errors and the gateways' errors, for a failing assertion."""
        marks = ("[alert]", "[crit]", "[error]", "ERROR", "Traceback")
        lines = [
            f"{log.name}: {line}"
            for log in [*sorted(self.logs.glob("*.log")), self.logs / "nginx.out"]
            for line in log.read_text(errors="replace").splitlines()
            if any(mark in line for mark in marks)
        ]
        return "\n".join(lines[-30:])


def clear_redis(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def _migrate(database_url: str) -> None:
    store = Store(database_url)
    try:
        await migrate(store)
    finally:
        await store.close()


@contextmanager
def running_cluster(root: Path, *, gateways: int, settings: Mapping[str, str]) -> Iterator[Cluster]:
    """The simulator, `gateways` processes with `settings` (besides the database, Redis under a
    key prefix of their own, and providers pointed at the simulator), and nginx in front, with
    a container's soft limit on open files. Everything is stopped, the database dropped and the
    Redis keys deleted afterwards."""
    redis_prefix = f"tollgate-cluster-test-{secrets.token_hex(6)}:"
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database())
        asyncio.run(_migrate(database_url))  # once, not by every process at the same moment
        (sim,) = stack.enter_context(running([(SIMULATOR, {}, root / "sim.log")], "/_sim/health"))
        stack.callback(clear_redis, REDIS_URL, redis_prefix)  # after the gateways stopped
        common = {
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_LOG_LEVEL": "warning",
            "TOLLGATE_REDIS__URL": REDIS_URL,
            "TOLLGATE_REDIS__KEY_PREFIX": redis_prefix,
            # 3 x 8 connections: the shared server's 100 must also serve CI's other worker.
            "TOLLGATE_DATABASE__MAX_CONNECTIONS": "8",
            **provider_env(sim.url),
            **settings,
        }
        commands = [
            (
                ["tollgate", "serve"],
                {**common, "TOLLGATE_DATA_DIR": str(root / name)},
                root / f"{name}.log",
            )
            for name in (f"gateway-{i}" for i in range(gateways))
        ]
        started = stack.enter_context(running(commands, "/readyz"))
        config = root / "nginx.conf"
        config.write_text(
            render(
                [g.url.removeprefix("http://") for g in started],
                listen=f"127.0.0.1:{free_port()}",
                pid=root / "nginx.pid",
            )
        )
        proxy = stack.enter_context(running_nginx(config, root, as_in_a_container=True))
        yield Cluster(proxy, [g.url for g in started], database_url, root)


# --- one run's traffic ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


def parsed(text: str) -> dict[str, Any]:
    """A JSON answer; anything else (an nginx error page) is kept as text for the message."""
    try:
        return dict(json.loads(text))
    except ValueError:
        return {"not_json": text[:300]}


@dataclass(frozen=True)
class Clients:
    """The official openai SDK (over httpx) sends a share of every burst; aiohttp sends the
    rest, at a tenth of httpx's CPU per request (the test shares two cores with the cluster)."""

    httpx: httpx.AsyncClient
    aiohttp: aiohttp.ClientSession


@dataclass
class Run:
    """One seed's world: the cluster, the clients, one store, one fresh account."""

    cluster: Cluster
    clients: Clients
    store: Store
    seed: int
    account_id: str = ""
    token: str = ""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # the amounts, prompts, clients and timings

    async def new_account(self, *, grant_nanos: int, name: str) -> None:
        """A fresh account with a token and exactly `grant_nanos` of credits (the API grants
        whole cents only)."""
        account = await account_repo.create_account(self.store, name)
        _, self.token = await issue_token(
            self.store, account.id, name="cluster test", permissions=PERMISSIONS
        )
        self.account_id = account.id
        await ledger_repo.append_entry(
            self.store, account.id, kind="grant", amount_nanos=grant_nanos, note="exact credits"
        )

    async def api(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The account's own API, through nginx, with its token."""
        response = await self.clients.httpx.request(
            method,
            f"{self.cluster.proxy}/client/v4/accounts/{self.account_id}{path}",
            headers={"authorization": f"Bearer {self.token}"},
            json=body,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def served(self) -> list[float]:
        """Each gateway's own count of data-plane requests (loopback may read /metrics)."""
        counts = []
        for url in self.cluster.gateways:
            page = (await self.clients.httpx.get(f"{url}/metrics")).text
            counts.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in page.splitlines()
                    if line.startswith("tollgate_requests_total{")
                )
            )
        return counts

    async def burst(
        self, count: int, *, model: str, max_tokens: int, sdk_percent: int, gateway: str
    ) -> list[Answer]:
        """`count` chat completions at once, each asking for exactly `max_tokens` output tokens.
        The seed picks each one's prompt, client, start delay and simulator latency."""
        base = f"{self.cluster.proxy}/v1/{self.account_id}/{gateway}/openai"
        sdk = openai.AsyncOpenAI(
            base_url=base, api_key=self.token, http_client=self.clients.httpx, max_retries=0
        )
        through_sdk = set(self.rng.sample(range(count), k=count * sdk_percent // 100))
        plans = [
            (
                " ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 12))),
                i in through_sdk,
                self.rng.uniform(0, 0.05),  # start delay, seconds
                self.rng.randint(20, 150),  # the simulator's latency, ms
            )
            for i in range(count)
        ]

        async def one(words: str, via_sdk: bool, delay: float, latency: int) -> Answer:
            await asyncio.sleep(delay)
            prompt = f"{words} [sim output-tokens={max_tokens} latency-ms={latency}]"
            messages: Any = [{"role": "user", "content": prompt}]
            if via_sdk:
                try:
                    raw = await sdk.chat.completions.with_raw_response.create(
                        model=model, messages=messages, max_tokens=max_tokens
                    )
                except openai.APIStatusError as refused:
                    response = refused.response
                    return Answer(response.status_code, parsed(response.text), response.headers)
                completion = raw.parse()  # the SDK parses the answer
                assert completion.usage is not None
                return Answer(raw.status_code, completion.model_dump(), raw.headers)
            async with self.clients.aiohttp.post(
                f"{base}/chat/completions",
                headers={"authorization": f"Bearer {self.token}"},
                json={"model": model, "messages": messages, "max_tokens": max_tokens},
            ) as response:
                return Answer(response.status, parsed(await response.text()), response.headers)

        return list(await asyncio.gather(*(one(*plan) for plan in plans)))

    async def books(self) -> AccountSnapshot:
        return await check_invariants(self.store, self.account_id)  # raises on any mismatch


@asynccontextmanager
async def connected(cluster: Cluster) -> AsyncIterator[tuple[Clients, Store]]:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        httpx.AsyncClient(timeout=120, limits=limits) as httpx_client,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
    ):
        store = Store(cluster.database_url)
        try:
            yield Clients(httpx_client, session), store
        finally:
            await store.close()


Recheck = Callable[[], Awaitable[None]]


def run_seeds(
    cluster: Cluster,
    scenario: Callable[[Run], Awaitable[Recheck | None]],
    *,
    runs: int,
    recheck_after: float = 0.5,
) -> None:
    """Run the scenario once per seed (0 to `runs` - 1), one after the other; then, at least
    `recheck_after` seconds after the last run, the checks the runs asked to repeat (for what
    may still change after a run: a background task landing late)."""

    async def go() -> None:
        async with connected(cluster) as (clients, store):
            rechecks = []
            for seed in range(runs):
                recheck = await scenario(Run(cluster, clients, store, seed))
                if recheck is not None:
                    rechecks.append(recheck)
            if rechecks:
                await asyncio.sleep(recheck_after)
            for recheck in rechecks:
                await recheck()

    asyncio.run(go())
