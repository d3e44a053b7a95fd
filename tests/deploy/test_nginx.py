"""deploy/nginx.conf passes `nginx -t`, and carries real traffic: two gateways on one
PostgreSQL database behind it, as in deploy/compose.yaml, answering the official openai SDK,
streams included.

Each test runs a rendered copy in which only the addresses change (`tests.support.nginx`):
`gateway:8787` becomes loopback addresses, and for the traffic test the listening port and the
pid file move to the test's own. Everything else is the file as shipped. Many gateway processes
under 1,000 concurrent requests: `test_cluster.py`.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import uvicorn
from openai import OpenAI

from tests.conftest import ADMIN_TOKEN
from tests.deploy.files import NGINX_CONF
from tests.support.accounts import seed_account
from tests.support.databases import fresh_postgres_database
from tests.support.nginx import nginx_binary, render, running_nginx
from tests.support.server import free_port, serve_in_thread
from tollgate.app import create_app
from tollgate.providers.registry import PROVIDERS
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = nginx_binary()
    config = tmp_path / "nginx.conf"
    config.write_text(render(["127.0.0.1:8787"], pid=tmp_path / "nginx.pid"))
    result = subprocess.run(
        [nginx, "-t", "-q", "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "err")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_streams_are_not_buffered_and_posts_are_never_retried() -> None:
    """The two settings a model gateway needs from its proxy, and their reasons."""
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*proxy_buffering off;", text, re.M)
    assert re.search(r"^\s*proxy_request_buffering off;", text, re.M)
    # Without `non_idempotent`, nginx never resends a POST (a model call) that was sent.
    (retry_on,) = re.findall(r"^\s*proxy_next_upstream\s+([^;]*);", text, re.M)
    assert "non_idempotent" not in retry_on.split()
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))  # type: ignore[union-attr]
    assert read_timeout > load_settings(env={}).upstream.first_byte_timeout_seconds


def test_nginx_drops_idle_gateway_connections_before_the_gateway_does() -> None:
    """Otherwise nginx can send a request on a connection the gateway is closing, and a POST
    that fails that way is not retried: the client gets a 502."""
    server = load_settings(env={}).server
    # `server.keep_alive_timeout_seconds` where this version has it, else uvicorn's default.
    default = uvicorn.Config("tollgate.app:create_app").timeout_keep_alive
    gateway_idle = float(getattr(server, "keep_alive_timeout_seconds", default))
    upstreams = re.findall(r"^\s*upstream \S+ \{(.*?)^\s*\}", NGINX_CONF.read_text(), re.M | re.S)
    assert len(upstreams) == 2
    for block in upstreams:
        nginx_idle = re.search(r"keepalive_timeout (\d+)s;", block)
        assert nginx_idle is not None, block
        assert int(nginx_idle.group(1)) < gateway_idle


def requests_served(gateway_url: str) -> float:
    """The gateway's own count of data-plane requests (loopback may read /metrics)."""
    page = httpx.get(f"{gateway_url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("tollgate_requests_total{")
    )


@pytest.mark.postgres
def test_two_gateways_behind_nginx_share_the_traffic_and_one_ledger(tmp_path: Path) -> None:
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database())
        sim_url = stack.enter_context(serve_in_thread(create_sim_app()))
        account = seed_account(database_url, credits_cents=10_000)
        gateways = []
        for name in ("a", "b"):
            settings = load_settings(
                env={
                    "TOLLGATE_DATA_DIR": str(tmp_path / name),
                    "TOLLGATE_DATABASE_URL": database_url,
                    "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                    "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": sim_url + PROVIDERS["openai"].sim_path,
                    "TOLLGATE_PROVIDERS__OPENAI__API_KEY": "managed-openai-key",
                }
            )
            gateways.append(stack.enter_context(serve_in_thread(create_app(settings))))
        config = tmp_path / "nginx.conf"
        config.write_text(
            render(
                [url.removeprefix("http://") for url in gateways],
                listen=f"127.0.0.1:{free_port()}",
                pid=tmp_path / "nginx.pid",
            )
        )
        proxy = stack.enter_context(running_nginx(config, tmp_path))

        base = f"{proxy}/v1/{account.account_id}/default/openai"
        client = OpenAI(base_url=base, api_key=account.token, max_retries=0)
        message = [{"role": "user", "content": "Hello through nginx"}]
        costs = []
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=message, max_tokens=32
            )
            assert raw.parse().choices[0].message.content
            costs.append(raw.headers["cf-aig-cost"])
        for _ in range(4):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=message, max_tokens=32, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text
        # The stream's closing cost comment (an SSE comment line) passes through nginx too.
        with httpx.stream(
            "POST",
            f"{base}/chat/completions",
            headers={"Authorization": f"Bearer {account.token}"},
            json={"model": "gpt-4o-mini", "messages": message, "max_tokens": 32, "stream": True},
        ) as response:
            lines = list(response.iter_lines())
        assert response.headers["content-type"].startswith("text/event-stream")
        assert any(line.startswith(": cf-aig-cost=") for line in lines)
        assert "data: [DONE]" in lines

        # Both gateways took a share, and one ledger holds every charge.
        served = [requests_served(url) for url in gateways]
        assert all(count > 0 for count in served), served
        assert sum(served) == 9
        ledger = httpx.get(
            f"{proxy}/admin/v1/accounts/{account.account_id}/ledger",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert ledger.status_code == 200, ledger.text
        usage = [e for e in ledger.json()["entries"] if e["kind"] == "usage"]
        assert len(usage) == 9

        # Per-process metrics are scraped per gateway, not through the balancer.
        assert httpx.get(f"{proxy}/metrics").status_code == 404
        # The dashboard is proxied (to the gateway that holds the browser's session).
        assert httpx.get(f"{proxy}/dashboard").status_code in (200, 303, 307)
