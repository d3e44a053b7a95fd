"""The fuzz suite's target: a real gateway on a loopback port, its providers played by the
simulator, with an account, an operator token and one of each resource the API manages, so that
generated requests reach the handlers instead of stopping at 401 or 404.

The resources are checked before each operation's run and made again where an earlier run
deleted them (a fuzzed DELETE may hit them: that is the point), so every operation finds them.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Sim, provider_env
from tests.e2e.conftest import sim as sim  # the session's simulator, shared with tests/e2e
from tests.support.accounts import Seeded, seed_account
from tests.support.databases import fresh_postgres_database
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings

FUZZ_GATEWAY = "fuzz-gateway"
CUSTOM_PROVIDER = {"name": "Fuzz", "slug": "fuzz", "base_url": "https://fuzz.example/v1"}
PROVIDER_CONFIG = {"provider_slug": "openai", "secret": "sk-fuzz-stored-key", "alias": "fuzz"}


@dataclass
class FuzzTarget:
    url: str
    account: Seeded  # /client/v4 calls: a token with run, read and edit
    admin_account: Seeded  # /admin/v1 calls act on this one, so disabling it blocks nothing
    # Ids of existing resources, which the test sends in place of a generated id now and then.
    gateway_id: str = FUZZ_GATEWAY
    log_id: str = "not-yet"  # each "not-yet" is a 404 until `_Resources.ensure` creates it
    custom_provider_id: str = "not-yet"
    provider_config_id: str = "not-yet"


class _Resources:
    """Makes sure each resource exists (creating it again if it was deleted)."""

    def __init__(self, target: FuzzTarget) -> None:
        self.target = target
        account = target.account
        self.base = f"{target.url}/client/v4/accounts/{account.account_id}/ai-gateway"
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {account.token}"}, timeout=30
        )

    def ensure(self) -> None:
        target, http = self.target, self.http
        # PUT restores the gateway's settings too (a fuzzed PUT may have turned logging off).
        gateway = f"/gateways/{target.gateway_id}"
        if http.put(gateway, json=REQUIRED_GATEWAY_FIELDS).status_code == 404:
            self._create("/gateways", {"id": target.gateway_id, **REQUIRED_GATEWAY_FIELDS})
        if http.get(f"/custom-providers/{target.custom_provider_id}").status_code == 404:
            target.custom_provider_id = self._create("/custom-providers", CUSTOM_PROVIDER)
        configs = f"{gateway}/provider_configs"
        if http.get(f"{configs}/{target.provider_config_id}").status_code == 404:
            target.provider_config_id = self._create(configs, PROVIDER_CONFIG)
        if http.get(f"{gateway}/logs/{target.log_id}").status_code == 404:
            target.log_id = self._new_log()

    def _create(self, path: str, body: dict[str, object]) -> str:
        response = self.http.post(path, json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["result"]["id"])

    def _new_log(self) -> str:
        """One data-plane request; its log id, once the log is written (a moment later)."""
        target = self.target
        # A fuzzed spending limit could refuse the request: it goes first.
        self.http.delete("/billing/spending-limit")
        chat = httpx.post(
            f"{target.url}/v1/{target.account.account_id}/{target.gateway_id}/openai/"
            "chat/completions",
            headers={"Authorization": f"Bearer {target.account.token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 200, chat.text
        log_id = chat.headers["cf-aig-log-id"]
        deadline = time.monotonic() + 10
        while self.http.get(f"/gateways/{target.gateway_id}/logs/{log_id}").status_code == 404:
            assert time.monotonic() < deadline, "the request's log was not written in 10 s"
            time.sleep(0.05)
        return log_id


@contextmanager
def _database(directory: Path) -> Iterator[str]:
    """SQLite unless TOLLGATE_FUZZ_DATABASE=postgresql (a fresh database, dropped after)."""
    engine = os.environ.get("TOLLGATE_FUZZ_DATABASE", "sqlite")
    if engine == "postgresql":
        with fresh_postgres_database() as url:
            yield url
    else:
        assert engine == "sqlite", f"TOLLGATE_FUZZ_DATABASE is sqlite or postgresql, not {engine}"
        yield f"sqlite:///{directory / 'gateway.db'}"


@pytest.fixture(scope="module")
def _fuzz_gateway(tmp_path_factory: pytest.TempPathFactory, sim: Sim) -> Iterator[_Resources]:
    directory = tmp_path_factory.mktemp("fuzz")
    with _database(directory) as database_url:
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(directory / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                # Stored provider keys need it (provider_configs answer 503 without one).
                "TOLLGATE_OPERATOR__MASTER_KEY": base64.b64encode(bytes(range(32))).decode(),
                **provider_env(sim.url),
            }
        )
        account = seed_account(database_url)
        admin_account = seed_account(database_url, name="admin fuzz target")
        with serve_in_thread(create_app(settings)) as url:
            resources = _Resources(FuzzTarget(url, account, admin_account))
            try:
                yield resources
            finally:
                resources.http.close()


@pytest.fixture
def fuzz_target(_fuzz_gateway: _Resources) -> FuzzTarget:
    """The module's gateway, every resource in place."""
    _fuzz_gateway.ensure()
    return _fuzz_gateway.target
