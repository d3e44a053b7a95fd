"""End-to-end fixtures: the simulator and the gateway, each a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.accounts import Seeded, seed_account
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.providers.registry import PROVIDERS
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app

MANAGED_OPENAI_KEY = "sk-managed-openai-for-tests"


def managed_key(slug: str) -> str:
    return MANAGED_OPENAI_KEY if slug == "openai" else f"managed-{slug}-key"


def provider_env(sim_url: str) -> dict[str, str]:
    """Point every provider at the simulator, each with its own managed key."""
    env: dict[str, str] = {}
    for slug, row in PROVIDERS.items():
        base = sim_url + row.sim_path  # the simulator's path for the provider's wire format
        name = slug.upper().replace("-", "_")
        env[f"TOLLGATE_PROVIDERS__{name}__BASE_URL"] = base
        env[f"TOLLGATE_PROVIDERS__{name}__API_KEY"] = managed_key(slug)
    return env


@dataclass
class Gateway:
    url: str
    database_url: str
    account: Seeded

    def openai_base(self, account_id: str | None = None, gateway: str = "default") -> str:
        return self.base("openai", account_id, gateway)

    def base(self, provider: str, account_id: str | None = None, gateway: str = "default") -> str:
        return f"{self.url}/v1/{account_id or self.account.account_id}/{gateway}/{provider}"

    def sync_books(self) -> None:
        """Read the books through the gateway once, as a client would. The data plane answers
        a request before its settlement's batch is committed (`billing.settle_interval_ms`);
        a read in the gateway's process commits what is queued first. A test reading the
        database directly (another process's view) calls this first."""
        response = httpx.get(
            f"{self.url}/admin/v1/accounts/{self.account.account_id}/ledger",
            params={"limit": 1},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url

    def requests(self) -> list[dict[str, object]]:
        return list(httpx.get(f"{self.url}/_sim/requests").json())

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_sim/requests")


@pytest.fixture(scope="session")
def sim() -> Iterator[Sim]:
    with serve_in_thread(create_sim_app()) as url:
        yield Sim(url)


@pytest.fixture
def start_gateway(tmp_path: Path, sim: Sim) -> Callable[..., AbstractContextManager[Gateway]]:
    """Start a gateway whose providers point at the simulator (not sandbox mode)."""
    from contextlib import contextmanager

    @contextmanager
    def start(database_url: str | None = None, **env: str) -> Iterator[Gateway]:
        """`database_url`: SQLite in the test's directory unless given (e.g. PostgreSQL)."""
        database_url = database_url or f"sqlite:///{tmp_path / 'gw.db'}"
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                **provider_env(sim.url),
                **env,
            }
        )
        account = seed_account(database_url)
        sim.clear()
        with serve_in_thread(create_app(settings)) as url:
            yield Gateway(url, database_url, account)

    return start


@pytest.fixture
def gateway(start_gateway: Callable[..., AbstractContextManager[Gateway]]) -> Iterator[Gateway]:
    with start_gateway() as running:
        yield running
