"""The Universal endpoint end to end: `POST /v1/{account}/{gateway}` with one step or an array of
steps, tried in order. No SDK speaks it, so the client is plain httpx; each answer is the
provider's own and is parsed as such. `Sim.requests()` shows which steps reached an upstream,
the ledger what was charged (a failed step never is). Money-relevant tests run on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import cloudflare
import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import books
from tests.e2e.test_retries import (
    CLAUDE,
    MODEL,
    any_gateway,
    attempts,
    charged_nothing,
    charged_once,
    create_gateway,
    fail_key,
    failing,
)

__all__ = ["any_gateway"]  # the fixture, shared with test_retries

PROMPT = [{"role": "user", "content": "Say hello"}]


def openai_step(headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": headers or {},
        "query": {"model": MODEL, "messages": PROMPT, "max_tokens": 20},
        **extra,
    }


def anthropic_step(headers: dict[str, str] | None = None, **query: Any) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "endpoint": "v1/messages",
        "headers": {"anthropic-version": "2023-06-01", **(headers or {})},
        "query": {"model": CLAUDE, "max_tokens": 20, "messages": PROMPT, **query},
    }


def universal(
    gateway: Gateway, body: object, gateway_id: str = "default", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/{gateway.account.account_id}/{gateway_id}",
        headers={"cf-aig-authorization": f"Bearer {gateway.account.token}", **headers},
        content=json.dumps(body),
        timeout=30,
    )


# --- steps and fallbacks ------------------------------------------------------------------------


def test_a_single_step_object_is_answered_by_step_0(any_gateway: Gateway) -> None:
    before = books(any_gateway)
    response = universal(any_gateway, openai_step())

    assert response.status_code == 200
    assert response.headers["cf-aig-step"] == "0"
    assert response.json()["object"] == "chat.completion"
    assert "cf-aig-log-id" in response.headers
    charged_once(any_gateway, before, response.headers["cf-aig-cost"])


def test_a_failing_step_falls_back_to_the_next_and_is_never_billed(
    any_gateway: Gateway, sim: Sim
) -> None:
    sim.clear()
    before = books(any_gateway)
    response = universal(any_gateway, [openai_step({"x-sim-error": "503"}), anthropic_step()])

    assert response.status_code == 200
    assert response.headers["cf-aig-step"] == "1"
    assert response.json()["type"] == "message"  # Anthropic's answer, as Anthropic sent it
    paths = [str(r["path"]) for r in sim.requests()]
    assert len(paths) == 2 and "chat/completions" in paths[0] and "messages" in paths[1]
    charged_once(any_gateway, before, response.headers["cf-aig-cost"])  # Anthropic's only


def test_a_step_that_times_out_falls_back(any_gateway: Gateway) -> None:
    before = books(any_gateway)
    slow = openai_step({"x-sim-latency-ms": "3000"}, config={"requestTimeout": 300})
    started = time.monotonic()
    response = universal(any_gateway, [slow, anthropic_step()])

    assert time.monotonic() - started < 2.5
    assert response.status_code == 200 and response.headers["cf-aig-step"] == "1"
    charged_once(any_gateway, before, response.headers["cf-aig-cost"])


def test_a_step_retries_before_falling_back(any_gateway: Gateway, sim: Sim) -> None:
    key = fail_key()
    before = books(any_gateway)
    flaky = openai_step(failing(1, key), config={"maxAttempts": 2})
    response = universal(any_gateway, [flaky, anthropic_step()])

    assert response.status_code == 200 and response.headers["cf-aig-step"] == "0"
    assert attempts(sim, key) == 2
    charged_once(any_gateway, before, response.headers["cf-aig-cost"])


def test_when_every_step_fails_the_last_answer_is_relayed(any_gateway: Gateway, sim: Sim) -> None:
    sim.clear()
    before = books(any_gateway)
    steps = [openai_step({"x-sim-error": "500"}), anthropic_step({"x-sim-error": "429"})]
    response = universal(any_gateway, steps)

    assert response.status_code == 429
    assert response.headers["cf-aig-step"] == "1"
    assert response.json()["type"] == "error"  # in Anthropic's shape: its own answer
    assert len(sim.requests()) == 2
    charged_nothing(any_gateway, before)


def test_when_the_last_step_times_out_the_client_gets_a_504(gateway: Gateway) -> None:
    slow = anthropic_step({"x-sim-latency-ms": "3000"})
    slow["config"] = {"requestTimeout": 200}
    response = universal(gateway, [openai_step({"x-sim-error": "502"}), slow])
    assert response.status_code == 504
    assert response.headers["cf-aig-step"] == "1"
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_a_fallback_can_stream(gateway: Gateway) -> None:
    before = books(gateway)
    steps = [openai_step({"x-sim-error": "503"}), anthropic_step(stream=True)]
    response = universal(gateway, steps)

    assert response.status_code == 200 and response.headers["cf-aig-step"] == "1"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: message_stop" in response.text
    after = books(gateway)
    assert [entry.kind for entry in after.since(before)] == ["usage"]
    assert after.open_holds == []


def test_a_refusal_by_the_gateway_ends_the_request_without_trying_later_steps(
    gateway: Gateway, sim: Sim
) -> None:
    """An unpriced model cannot be billed: that is about the request, not the provider."""
    sim.clear()
    unpriced = openai_step()
    unpriced["query"]["model"] = "no-such-model-anywhere"
    response = universal(gateway, [unpriced, anthropic_step()])

    assert 400 <= response.status_code < 500
    assert response.headers["cf-aig-step"] == "0"
    assert sim.requests() == []


# --- headers: step > request > gateway ----------------------------------------------------------


def test_step_headers_override_request_headers_which_override_the_gateway(
    gateway: Gateway, sim: Sim
) -> None:
    create_gateway(gateway, "retrying", retry_max_attempts=4)
    first, second, third = fail_key(), fail_key(), fail_key()
    # The gateway says 4; the request says 1; the step says 3.
    steps = [openai_step({**failing(2, first), "cf-aig-max-attempts": "3"})]
    response = universal(gateway, steps, "retrying", **{"cf-aig-max-attempts": "1"})
    assert response.status_code == 200 and attempts(sim, first) == 3

    # Without the step header the request's 1 wins over the gateway's 4.
    response = universal(
        gateway, [openai_step(failing(2, second))], "retrying", **{"cf-aig-max-attempts": "1"}
    )
    assert response.status_code == 503 and attempts(sim, second) == 1

    # The step's config wins over its own headers.
    step = openai_step({**failing(2, third), "cf-aig-max-attempts": "1"}, config={"maxAttempts": 3})
    response = universal(gateway, [step], "retrying")
    assert response.status_code == 200 and attempts(sim, third) == 3


def test_a_step_can_carry_its_own_provider_key(gateway: Gateway, sim: Sim) -> None:
    """BYOK in a step: the key is forwarded and the account is not billed."""
    sim.clear()
    before = books(gateway)
    response = universal(gateway, openai_step({"authorization": "Bearer sk-client-own-key"}))
    assert response.status_code == 200
    assert sim.requests()[0]["headers"]["authorization"] == "Bearer sk-client-own-key"  # type: ignore[index]
    charged_nothing(gateway, before)


# --- bad input: a 400 naming what is wrong, and nothing sent or billed ---------------------------


def _bad_steps() -> list[tuple[object, str]]:
    no_provider = openai_step()
    del no_provider["provider"]
    no_endpoint = openai_step()
    del no_endpoint["endpoint"]
    return [
        (42, "invalid_steps"),
        ([], "invalid_steps"),
        ([openai_step()] * 11, "invalid_steps"),
        (["openai"], "step[0]"),
        ([no_provider], "step[0].provider"),
        ([openai_step(), {**openai_step(), "provider": "nope"}], "step[1].provider"),
        ([openai_step(), {**openai_step(), "provider": "compat"}], "step[1].provider"),
        ([no_endpoint], "step[0].endpoint"),
        ([{**openai_step(), "endpoint": "../admin"}], "step[0].endpoint"),
        ([{**openai_step(), "query": "hello"}], "step[0].query"),
        ([{**openai_step(), "headers": ["x"]}], "step[0].headers"),
        ([openai_step({"bad header": "x"})], "step[0].headers.bad header"),
        ([openai_step({"x-k": {"nested": 1}})], "step[0].headers.x-k"),
        ([openai_step(config={"maxAttempts": 6})], "step[0].config.maxAttempts"),
        ([openai_step(config={"retryDelay": 5001})], "step[0].config.retryDelay"),
        ([openai_step(config={"requestTimeout": 0})], "step[0].config.requestTimeout"),
        ([openai_step(config={"backoff": "random"})], "step[0].config.backoff"),
        ([openai_step(config={"retries": 2})], "step[0].config.retries"),
        ([openai_step(config=[1])], "step[0].config"),
        ([openai_step(), openai_step({"cf-aig-backoff": "soon"})], "step[1].headers"),
        ([{**openai_step(), "model": "x"}], "step[0].model"),
    ]


@pytest.mark.parametrize(("body", "named"), _bad_steps())
def test_a_malformed_universal_body_is_a_400_naming_the_step_and_field(
    gateway: Gateway, sim: Sim, body: object, named: str
) -> None:
    sim.clear()
    before = books(gateway)
    response = universal(gateway, body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert named in (error.get("param") or "") or named == error["code"], error
    assert sim.requests() == []
    charged_nothing(gateway, before)


def test_a_body_that_is_not_json_is_a_400(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/{gateway.account.account_id}/default",
        headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
        content=b"{not json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_a_bad_retry_header_on_the_request_is_a_400_naming_it(gateway: Gateway, sim: Sim) -> None:
    sim.clear()
    response = universal(gateway, openai_step(), **{"cf-aig-max-attempts": "9"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cf-aig-max-attempts"
    assert sim.requests() == []


def test_only_post_is_served(gateway: Gateway) -> None:
    response = httpx.get(
        f"{gateway.url}/v1/{gateway.account.account_id}/default",
        headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
    )
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_a_universal_request_without_a_token_is_a_401(gateway: Gateway, sim: Sim) -> None:
    sim.clear()
    response = httpx.post(
        f"{gateway.url}/v1/{gateway.account.account_id}/default", json=openai_step()
    )
    assert response.status_code == 401
    assert sim.requests() == []


def test_an_endpoint_may_carry_a_query_string(gateway: Gateway, sim: Sim) -> None:
    sim.clear()
    response = universal(gateway, {**openai_step(), "endpoint": "/chat/completions?tag=café"})
    assert response.status_code == 200
    recorded = sim.requests()
    assert len(recorded) == 1 and str(recorded[0]["path"]).endswith("/chat/completions")
    assert "tag=caf" in str(recorded[0]["query"])


def test_a_fallback_counts_once_against_the_gateways_rate_limit(any_gateway: Gateway) -> None:
    """Two steps of one Universal request are one request to the rate limiter: with a limit of
    2, two requests that each fall back are both answered and the third is refused."""
    gateway_id = f"ratelimited-{time.time_ns()}"
    create_gateway(
        any_gateway,
        gateway_id,
        rate_limiting_limit=2,
        rate_limiting_interval=3600,
        rate_limiting_technique="fixed",
    )
    steps = [openai_step({"x-sim-error": "503"}), anthropic_step()]

    answered = [universal(any_gateway, steps, gateway_id) for _ in range(2)]
    refused = universal(any_gateway, steps, gateway_id)

    assert [r.status_code for r in answered] == [200, 200]
    assert [r.headers["cf-aig-step"] for r in answered] == ["1", "1"]
    assert refused.status_code == 429
    assert "retry-after" in refused.headers


def test_a_fallback_is_logged_with_the_step_provider_and_path_that_answered(
    any_gateway: Gateway,
) -> None:
    response = universal(any_gateway, [openai_step({"x-sim-error": "503"}), anthropic_step()])
    assert response.status_code == 200 and response.headers["cf-aig-step"] == "1"
    log_id = response.headers["cf-aig-log-id"]
    logs = cloudflare.Cloudflare(
        api_token=any_gateway.account.token,
        base_url=f"{any_gateway.url}/client/v4",
        max_retries=0,
    ).ai_gateway.logs

    deadline = time.monotonic() + 10
    while True:  # the writer batches: the log lands a moment after the response
        try:
            log = logs.get(log_id, account_id=any_gateway.account.account_id, gateway_id="default")
            break
        except cloudflare.NotFoundError:
            assert time.monotonic() < deadline, "the Universal request was never logged"
            time.sleep(0.05)

    assert (log.provider, log.path, log.step) == ("anthropic", "v1/messages", 1)
    assert log.request_type == "universal" and log.status_code == 200
    assert log.cost == pytest.approx(float(response.headers["cf-aig-cost"]), abs=1e-6)
