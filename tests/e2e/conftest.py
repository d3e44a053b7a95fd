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
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app

MANAGED_OPENAI_KEY = "sk-managed-openai-for-tests"


@dataclass
class Gateway:
    url: str
    database_url: str
    account: Seeded

    def openai_base(self, account_id: str | None = None, gateway: str = "default") -> str:
        return f"{self.url}/v1/{account_id or self.account.account_id}/{gateway}/openai"


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
    def start(**env: str) -> Iterator[Gateway]:
        database_url = f"sqlite:///{tmp_path / 'gw.db'}"
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": f"{sim.url}/openai/v1",
                "TOLLGATE_PROVIDERS__OPENAI__API_KEY": MANAGED_OPENAI_KEY,
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
