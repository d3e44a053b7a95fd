"""docs/operations.md, "Runbooks": what a gateway on PostgreSQL does when the database goes away
and comes back, as the runbook says it.

PostgreSQL is reached through a TCP relay the test controls, so the shared server is never
touched: cutting the relay closes every connection and refuses new ones (the database is down),
starting it again forwards again (it is back). Providers are played by the simulator, which
records every request it receives.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.test_outages_under_load import served
from tests.support.accounts import Seeded, seed_account
from tests.support.databases import PG_ADMIN_DSN, fresh_postgres_database
from tests.support.server import free_port, serve_in_thread
from tests.support.tcp_proxy import TcpProxy
from tollgate.app import create_app
from tollgate.providers.registry import PROVIDERS
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app

pytestmark = pytest.mark.postgres

MESSAGES = [{"role": "user", "content": "Is the ledger there?"}]


@contextmanager
def gateway_through_relay(tmp_path: Path) -> Iterator[tuple[str, Seeded, TcpProxy, str]]:
    """(gateway URL, a seeded account, the relay, the simulator URL)."""
    with ExitStack() as stack:
        database = stack.enter_context(fresh_postgres_database())
        account = seed_account(database, credits_cents=10_000)
        relay = TcpProxy()
        stack.callback(relay.close)
        relay.forward()
        sim_url = stack.enter_context(serve_in_thread(create_sim_app()))
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database.replace(":5432/", f":{relay.port}/"),
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": sim_url + PROVIDERS["openai"].sim_path,
                "TOLLGATE_PROVIDERS__OPENAI__API_KEY": "managed-openai-key",
            }
        )
        url = stack.enter_context(serve_in_thread(create_app(settings)))
        yield url, account, relay, sim_url


def client(url: str, account: Seeded) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1/{account.account_id}/default/openai",
        api_key=account.token,
        max_retries=0,
    )


def chat(url: str, account: Seeded) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/{account.account_id}/default/openai/chat/completions",
        headers={"Authorization": f"Bearer {account.token}"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16},
        timeout=30,
    )


def upstream_calls(sim_url: str) -> int:
    return len(httpx.get(f"{sim_url}/_sim/requests").json())


def test_while_postgres_is_down_billed_requests_fail_unforwarded_and_recover_by_themselves(
    tmp_path: Path,
) -> None:
    with gateway_through_relay(tmp_path) as (url, account, relay, sim_url):
        assert chat(url, account).status_code == 200
        calls = upstream_calls(sim_url)

        relay.cut()
        for _ in range(3):
            refused = chat(url, account)
            assert refused.status_code == 503  # fail closed, in the client's format
            assert refused.json()["error"]["code"] == "ledger_unavailable"
        assert upstream_calls(sim_url) == calls, "a request without a hold reached the provider"
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness: the process is up

        relay.forward()
        reply = client(url, account).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
        )
        assert reply.http_response.status_code == 200
        assert reply.headers["cf-aig-cost"]
        ledger = httpx.get(
            f"{url}/admin/v1/accounts/{account.account_id}/ledger",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ).json()["entries"]
        assert sum(entry["kind"] == "usage" for entry in ledger) == 2


def test_while_postgres_is_down_billed_requests_get_a_503_in_the_clients_format(
    tmp_path: Path,
) -> None:
    with gateway_through_relay(tmp_path) as (url, account, relay, _):
        relay.cut()
        with pytest.raises(openai.APIStatusError) as refused:
            client(url, account).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
            )
        assert refused.value.status_code == 503
        assert isinstance(refused.value.body, dict)
        assert refused.value.body.get("code") == "ledger_unavailable"


def test_a_gateway_started_while_postgres_is_down_exits_1_for_its_supervisor(
    tmp_path: Path,
) -> None:
    """Docker's restart policy and Kubernetes restart it until the database is back."""
    nothing_listens = free_port()
    env = {
        **os.environ,
        "TOLLGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{nothing_listens}/tollgate",
        "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
        "TOLLGATE_SERVER__PORT": str(free_port()),
    }
    tollgate = Path(sys.executable).parent / "tollgate"
    result = subprocess.run(
        [str(tollgate), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "the gateway did not start" in result.stderr


def as_superuser(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def database_of_its_own_role() -> Iterator[tuple[str, str]]:
    """(URL, role): a fresh database owned by a fresh login role, which is not a superuser, so
    a connection limit set on it applies."""
    role = f"tollgate_role_{secrets.token_hex(4)}"
    as_superuser(f'CREATE ROLE "{role}" LOGIN')
    try:
        with fresh_postgres_database() as url:
            as_superuser(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" OWNER TO "{role}"')
            yield url.replace("//postgres@", f"//{role}@"), role
    finally:
        as_superuser(f'DROP ROLE IF EXISTS "{role}"')


def test_a_database_out_of_connections_gets_503s_in_every_api_and_recovers(
    tmp_path: Path,
) -> None:
    """PostgreSQL refusing connections with "too many clients" (SQLSTATE 53300), as a server at
    its max_connections does: asyncpg raises it as a plain PostgresError, not a connection
    failure. Each API answers a 503 in its own format, never a 500, and nothing is forwarded."""
    with (
        database_of_its_own_role() as (database, role),
        served(tmp_path, database) as gateway,
    ):
        url, account, sim_url = gateway.url, gateway.account, gateway.sim_url
        assert chat(url, account).status_code == 200
        calls = upstream_calls(sim_url)

        as_superuser(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        as_superuser(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        )
        with pytest.raises(asyncpg.TooManyConnectionsError):  # what the gateway meets now
            asyncio.run(asyncpg.connect(database))

        for _ in range(3):
            refused = chat(url, account)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "ledger_unavailable"
        management = httpx.get(
            f"{url}/client/v4/accounts/{account.account_id}/ai-gateway/gateways",
            headers={"Authorization": f"Bearer {account.token}"},
        )
        assert management.status_code == 503, management.text
        assert management.json()["success"] is False
        assert "database" in management.json()["errors"][0]["message"]
        admin = httpx.get(
            f"{url}/admin/v1/accounts/{account.account_id}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert admin.status_code == 503, admin.text
        assert admin.json()["error"]["code"] == "database_unavailable"
        assert upstream_calls(sim_url) == calls, "a request without a hold reached the provider"

        as_superuser(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        assert chat(url, account).status_code == 200
