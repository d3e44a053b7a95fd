"""`/metrics` end to end: traffic through the official `openai` SDK against a real gateway and
the simulator (Unified Billing, bring-your-own-key, a cache miss and hit, a provider's 503, an
unreachable provider), then one scrape, parsed strictly, whose counters must have moved by
exactly what was sent; and who may scrape (loopback, a proxy, a remote client, the admin token).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway
from tests.e2e.test_billing_cost import openai_usage, price_of
from tests.support import prometheus
from tollgate import money
from tollgate.app import create_app
from tollgate.settings import load_settings

PROMPT: Any = [{"role": "user", "content": "Say hello"}]
MODEL = "gpt-4o-mini"


def dead_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def gateway(start_gateway: Callable[..., AbstractContextManager[Gateway]]) -> Iterator[Gateway]:
    """mistral points at a port nobody listens on: its requests are `upstream_unreachable`."""
    unreachable = f"http://127.0.0.1:{dead_port()}"
    with start_gateway(TOLLGATE_PROVIDERS__MISTRAL__BASE_URL=unreachable) as running:
        yield running


def client(gateway: Gateway, provider: str = "openai", key: str | None = None) -> openai.OpenAI:
    """Unified Billing with the tollgate token; with `key`, the client's own provider key."""
    headers = {"cf-aig-authorization": f"Bearer {gateway.account.token}"} if key else None
    return openai.OpenAI(
        api_key=key or gateway.account.token,
        base_url=gateway.base(provider),
        max_retries=0,
        default_headers=headers,
    )


def scrape(gateway: Gateway, **headers: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/metrics", headers=headers)


def scrape_when(gateway: Gateway, requests: int) -> prometheus.Scrape:
    """The first scrape that counts `requests` data-plane requests (each is counted as its
    handler ends, which may be a moment after the client has read the whole response)."""
    deadline = time.monotonic() + 5
    while True:
        response = scrape(gateway)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        parsed = prometheus.parse(response.text)
        if parsed.total("tollgate_requests_total") >= requests or time.monotonic() > deadline:
            return parsed
        time.sleep(0.02)


def test_a_scrape_counts_exactly_the_traffic_that_was_sent(gateway: Gateway) -> None:
    billed = client(gateway)
    costs: list[int] = []  # every cf-aig-cost the gateway sent, in nano-dollars
    tokens_in = tokens_out = 0

    for _ in range(2):  # Unified Billing
        raw = billed.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT)
        costs.append(money.from_dollars(raw.headers["cf-aig-cost"]))
        usage = raw.parse().usage
        assert usage is not None
        tokens_in, tokens_out = (
            tokens_in + usage.prompt_tokens,
            tokens_out + usage.completion_tokens,
        )

    cache = {"cf-aig-cache-ttl": "120"}
    for expected in ("MISS", "HIT"):
        raw = billed.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "cache me"}], extra_headers=cache
        )
        assert raw.headers["cf-aig-cache-status"] == expected
        costs.append(money.from_dollars(raw.headers["cf-aig-cost"]))
        if expected == "MISS":
            usage = raw.parse().usage
            assert usage is not None
            tokens_in += usage.prompt_tokens
            tokens_out += usage.completion_tokens
    assert costs[-1] == 0  # the hit is free

    own_key = client(gateway, key="sk-the-clients-own-key")
    reply = own_key.chat.completions.create(model=MODEL, messages=PROMPT)
    assert reply.usage is not None
    tokens_in, tokens_out = (
        tokens_in + reply.usage.prompt_tokens,
        tokens_out + reply.usage.completion_tokens,
    )
    observed = price_of("openai", MODEL, openai_usage(reply.usage))

    failing = {
        "x-sim-fail-first": "1",
        "x-sim-fail-key": uuid.uuid4().hex,
        "x-sim-fail-status": "503",
    }
    with pytest.raises(openai.InternalServerError) as failed:
        billed.chat.completions.create(model=MODEL, messages=PROMPT, extra_headers=failing)
    assert failed.value.status_code == 503
    costs += [money.from_dollars(failed.value.response.headers.get("cf-aig-cost", "0"))]

    with pytest.raises(openai.InternalServerError) as unreachable:
        client(gateway, "mistral", key="sk-own-mistral-key").chat.completions.create(
            model="mistral-small-latest", messages=PROMPT
        )
    assert unreachable.value.status_code == 502

    metrics = scrape_when(gateway, requests=7)

    requests = "tollgate_requests_total"
    openai_2xx = {"provider": "openai", "status_class": "2xx"}
    assert metrics.value(requests, **openai_2xx, credential_source="unified", cached="false") == 3
    assert metrics.value(requests, **openai_2xx, credential_source="byok", cached="false") == 1
    assert metrics.value(requests, **openai_2xx, credential_source="none", cached="true") == 1
    failed_5xx = {"status_class": "5xx", "cached": "false"}
    assert (
        metrics.value(requests, provider="openai", credential_source="unified", **failed_5xx) == 1
    )
    assert metrics.value(requests, provider="mistral", credential_source="byok", **failed_5xx) == 1
    assert metrics.total(requests) == 7

    duration = "tollgate_request_duration_seconds"
    assert metrics.value(f"{duration}_count", provider="openai") == 6
    assert metrics.value(f"{duration}_bucket", provider="openai", le="+Inf") == 6
    assert metrics.value(f"{duration}_count", provider="mistral") == 1

    assert metrics.value("tollgate_input_tokens_total", provider="openai") == tokens_in
    assert metrics.value("tollgate_output_tokens_total", provider="openai") == tokens_out
    assert metrics.value("tollgate_billed_nanos_total", provider="openai") == sum(costs) > 0
    assert metrics.value("tollgate_observed_cost_nanos_total", provider="openai") == observed > 0

    errors = "tollgate_upstream_errors_total"
    assert metrics.value(errors, provider="openai", kind="status_5xx") == 1
    assert metrics.value(errors, provider="mistral", kind="upstream_unreachable") == 1
    assert metrics.total(errors) == 2

    assert metrics.value("tollgate_cache_hits_total") == 1
    assert metrics.value("tollgate_cache_misses_total") == 1
    assert metrics.types["tollgate_log_queue_depth"] == "gauge"
    assert ("tollgate_log_queue_depth", frozenset()) in metrics.samples
    # From the database: this account is the only one, and it has been charged exactly that.
    assert metrics.value("tollgate_credits_charged_nanos") == sum(costs)
    assert metrics.value("tollgate_credits_held_nanos") == 0
    assert ("tollgate_credits_held_nanos", frozenset()) in metrics.samples
    for name in metrics.types:
        assert metrics.helps[name], f"{name} has no HELP"

    # Nothing that identifies an account, a token or a prompt is in the page.
    page = scrape(gateway).text
    for secret in (gateway.account.account_id, gateway.account.token, "Say hello", "sk-the"):
        assert secret not in page


def test_a_loopback_request_through_a_proxy_needs_the_admin_token(gateway: Gateway) -> None:
    proxied = {"x-forwarded-for": "203.0.113.7"}
    refused = scrape(gateway, **proxied)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["message"].startswith("/metrics is served to loopback")
    assert scrape(gateway, **proxied, authorization=f"Bearer {ADMIN_TOKEN}").status_code == 200


@pytest.mark.parametrize("public", [False, True])
async def test_a_remote_client_needs_the_admin_token_unless_metrics_are_public(
    tmp_path: Path, public: bool
) -> None:
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_SANDBOX__ENABLED": "false",
            "TOLLGATE_METRICS__PUBLIC": str(public).lower(),
        }
    )
    app = create_app(settings)
    remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with app, httpx.AsyncClient(transport=remote, base_url="http://gateway") as http:
        anonymous = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"authorization": "Bearer not-the-token"})
        admin = await http.get("/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.status_code == 200
    assert "# TYPE tollgate_requests_total counter" in admin.text
    if public:
        assert anonymous.status_code == 200 and wrong.status_code == 200
    else:
        assert anonymous.status_code == 401 and wrong.status_code == 401
        assert anonymous.json()["errors"][0]["error_code"] == "missing_token"
        assert wrong.json()["errors"][0]["error_code"] == "invalid_token"
