"""Retries and first-byte timeouts end to end, through the official SDKs (their own retries off).

The simulator's transient-failure controls (`x-sim-fail-first`, `x-sim-fail-key`,
`x-sim-fail-status`, `x-sim-fail-latency-ms`) make the first N attempts of a request fail and the
next one succeed; `Sim.requests()` counts the attempts that reached the upstream; the ledger shows
what was charged. Each test uses its own fail key, so the simulator's counts never leak between
tests. The money-relevant tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import cloudflare
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import Books, books, header_nanos
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The e2e gateway on SQLite (the shared fixture) and on PostgreSQL (the session's fresh
    database; every test seeds its own account there)."""
    database_url = request.getfixturevalue("postgres_url") if request.param != "sqlite" else None
    with request.getfixturevalue("start_gateway")(database_url) as running:
        yield running


def fail_key() -> str:
    return f"k-{uuid.uuid4().hex}"


def failing(times: int, key: str, status: int = 503, latency_ms: int = 0) -> dict[str, str]:
    """Simulator headers: the first `times` requests carrying `key` fail."""
    return {
        "x-sim-fail-first": str(times),
        "x-sim-fail-key": key,
        "x-sim-fail-status": str(status),
        "x-sim-fail-latency-ms": str(latency_ms),
    }


def attempts(sim: Sim, key: str) -> int:
    """How many requests carrying the fail key reached the simulator."""
    return sum(
        1
        for recorded in sim.requests()
        if isinstance(recorded["headers"], dict)
        and recorded["headers"].get("x-sim-fail-key") == key
    )


def oai(gateway: Gateway, gateway_id: str = "default", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=gateway.account.token,
        base_url=gateway.base("openai", gateway=gateway_id),
        max_retries=0,  # the gateway retries, not the SDK
        default_headers=headers,
    )


def ask(client: openai.OpenAI, **extra_headers: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=20,
        extra_headers=extra_headers,
    )


def charged_once(gateway: Gateway, before: Books, cost_header: str) -> None:
    """Exactly one `usage` entry since `before`, for the cost the response reported, and no
    hold left open."""
    after = books(gateway)
    entries = after.since(before)
    assert [entry.kind for entry in entries] == ["usage"], entries
    assert -entries[0].amount_nanos == header_nanos({"cf-aig-cost": cost_header}, "cf-aig-cost")
    assert after.open_holds == []


def charged_nothing(gateway: Gateway, before: Books) -> None:
    after = books(gateway)
    assert after.since(before) == []
    assert after.balance_nanos == before.balance_nanos and after.open_holds == []


def create_gateway(gateway: Gateway, gateway_id: str, **settings: Any) -> None:
    client = cloudflare.Cloudflare(
        api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
    )
    client.ai_gateway.create(
        account_id=gateway.account.account_id,
        id=gateway_id,
        **{**REQUIRED_GATEWAY_FIELDS, **settings},
    )


# --- what is retried, and what it costs ---------------------------------------------------------


def test_a_5xx_is_retried_until_an_answer_and_billed_once(any_gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(any_gateway)
    raw = ask(oai(any_gateway, **{"cf-aig-max-attempts": "3"}), **failing(2, key))

    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content.startswith("This is a simulated reply")
    assert attempts(sim, key) == 3
    charged_once(any_gateway, before, raw.headers["cf-aig-cost"])


def test_when_every_attempt_fails_the_last_answer_is_relayed_and_nothing_billed(
    any_gateway: Gateway, sim: Sim
) -> None:
    key = fail_key()
    before = books(any_gateway)
    with pytest.raises(openai.InternalServerError) as raised:
        ask(oai(any_gateway, **{"cf-aig-max-attempts": "3"}), **failing(5, key, status=502))

    assert raised.value.status_code == 502  # the provider's own answer, unchanged
    assert attempts(sim, key) == 3
    charged_nothing(any_gateway, before)


def test_a_429_is_retried_with_the_gateways_retry_settings(any_gateway: Gateway, sim: Sim) -> None:
    create_gateway(any_gateway, "retrying", retry_max_attempts=2, retry_delay=0)
    key = fail_key()
    before = books(any_gateway)
    client = anthropic.Anthropic(
        api_key=any_gateway.account.token,
        base_url=any_gateway.base("anthropic", gateway="retrying"),
        max_retries=0,
    )
    raw = client.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=20,
        messages=[{"role": "user", "content": "Say hello"}],
        extra_headers=failing(1, key, status=429),
    )

    assert raw.http_response.status_code == 200 and raw.parse().content[0].type == "text"
    assert attempts(sim, key) == 2
    charged_once(any_gateway, before, raw.headers["cf-aig-cost"])


def test_headers_override_the_gateways_retry_settings(gateway: Gateway, sim: Sim) -> None:
    create_gateway(gateway, "retrying", retry_max_attempts=4)
    key = fail_key()
    with pytest.raises(openai.InternalServerError):
        ask(oai(gateway, "retrying", **{"cf-aig-max-attempts": "1"}), **failing(3, key))
    assert attempts(sim, key) == 1

    key = fail_key()
    raw = ask(oai(gateway, "retrying"), **failing(3, key))  # the gateway's 4 attempts
    assert raw.http_response.status_code == 200 and attempts(sim, key) == 4


def test_a_4xx_other_than_429_is_not_retried(gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(gateway)
    with pytest.raises(openai.BadRequestError):
        ask(oai(gateway, **{"cf-aig-max-attempts": "5"}), **failing(1, key, status=400))
    assert attempts(sim, key) == 1
    charged_nothing(gateway, before)


def test_without_retry_settings_a_request_is_sent_once(gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    with pytest.raises(openai.InternalServerError):
        ask(oai(gateway), **failing(1, key))
    assert attempts(sim, key) == 1


# --- timeouts -----------------------------------------------------------------------------------


def test_a_request_timeout_is_a_504_without_retries(any_gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(any_gateway)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        ask(
            oai(any_gateway, **{"cf-aig-request-timeout": "300"}),
            **failing(1, key, latency_ms=3000),
        )
    assert time.monotonic() - started < 2.5
    assert raised.value.status_code == 504
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "upstream_timeout"
    assert attempts(sim, key) == 1
    charged_nothing(any_gateway, before)


def test_a_timed_out_attempt_is_retried(any_gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(any_gateway)
    started = time.monotonic()
    headers = {"cf-aig-request-timeout": "300", "cf-aig-max-attempts": "2"}
    raw = ask(oai(any_gateway, **headers), **failing(1, key, latency_ms=3000))

    assert time.monotonic() - started < 2.5
    assert raw.http_response.status_code == 200
    assert attempts(sim, key) == 2
    charged_once(any_gateway, before, raw.headers["cf-aig-cost"])


def test_the_timeout_is_to_the_first_byte_a_slow_stream_runs_on(gateway: Gateway) -> None:
    client = oai(gateway, **{"cf-aig-request-timeout": "500"})
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello to everyone in the room please"}],
        stream=True,
        extra_headers={"x-sim-chunks": "4", "x-sim-chunk-delay-ms": "250"},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("This is a simulated reply")


# --- never after a stream has started -----------------------------------------------------------


def test_a_stream_that_breaks_after_it_started_is_not_retried(gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(gateway)
    client = oai(gateway, **{"cf-aig-max-attempts": "5"})
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a long story about the sea"}],
            stream=True,
            extra_headers={"x-sim-drop-after": "3", "x-sim-fail-key": key},
        )
        for chunk in stream:
            seen.extend(choice.delta.content or "" for choice in chunk.choices)
    assert seen, "the first events were relayed before the break"
    assert attempts(sim, key) == 1
    after = books(gateway)
    assert [entry.kind for entry in after.since(before)] == ["usage"]  # estimated, once
    assert after.open_holds == []


# --- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "least", "most"),
    [("constant", 0.4, 0.8), ("linear", 0.6, 1.0), ("exponential", 0.6, 1.0)],
)
def test_the_wait_between_attempts_follows_the_backoff(
    gateway: Gateway, sim: Sim, backoff: str, least: float, most: float
) -> None:
    """Three attempts at 200 ms: constant waits 200+200, linear 200+400, exponential 200+400."""
    key = fail_key()
    headers = {
        "cf-aig-max-attempts": "3",
        "cf-aig-retry-delay": "200",
        "cf-aig-backoff": backoff,
    }
    started = time.monotonic()
    raw = ask(oai(gateway, **headers), **failing(2, key))
    elapsed = time.monotonic() - started
    assert raw.http_response.status_code == 200 and attempts(sim, key) == 3
    assert least <= elapsed < most


# --- the Unified API retries too ----------------------------------------------------------------


def test_a_translated_unified_request_is_retried(gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(gateway)
    client = openai.OpenAI(
        api_key=gateway.account.token,
        base_url=gateway.base("compat"),
        max_retries=0,
        default_headers={"cf-aig-max-attempts": "2"},
    )
    raw = client.chat.completions.with_raw_response.create(
        model=f"anthropic/{CLAUDE}",
        messages=[{"role": "user", "content": f"Say hello [sim fail-first=1 fail-key={key}]"}],
        max_tokens=20,
    )
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    directive = f"fail-key={key}"
    sent = [r for r in sim.requests() if directive in str(r["body"])]
    assert len(sent) == 2
    charged_once(gateway, before, raw.headers["cf-aig-cost"])


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cf-aig-max-attempts", "0"),
        ("cf-aig-max-attempts", "6"),
        ("cf-aig-max-attempts", "two"),
        ("cf-aig-retry-delay", "5001"),
        ("cf-aig-retry-delay", "-1"),
        ("cf-aig-backoff", "random"),
        ("cf-aig-request-timeout", "0"),
        ("cf-aig-request-timeout", "1.5"),
        ("cf-aig-request-timeout", "600001"),
    ],
)
def test_a_bad_retry_or_timeout_header_is_a_400_naming_it(
    gateway: Gateway, sim: Sim, name: str, value: str
) -> None:
    before = books(gateway)
    sim.clear()
    with pytest.raises(openai.BadRequestError) as raised:
        ask(oai(gateway, **{name: value}))
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_header" and body["param"] == name
    assert name in body["message"] and value in body["message"]
    assert sim.requests() == []
    charged_nothing(gateway, before)


def test_a_bad_header_on_the_unified_api_is_refused_before_the_gateway_exists(
    gateway: Gateway, sim: Sim
) -> None:
    sim.clear()
    response = httpx.post(
        f"{gateway.base('compat', gateway='never-made')}/chat/completions",
        headers={
            "authorization": f"Bearer {gateway.account.token}",
            "cf-aig-backoff": "sometimes",
        },
        json={"model": f"openai/{MODEL}", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cf-aig-backoff"
    assert sim.requests() == []
    client = cloudflare.Cloudflare(
        api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
    )
    listed = client.ai_gateway.list(account_id=gateway.account.account_id)
    assert "never-made" not in [g.id for g in listed]
