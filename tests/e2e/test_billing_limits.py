"""Unified Billing end to end, under load: no overspend over HTTP, and auto top-up.

A balance (or an account spending limit) worth exactly N holds at a fixed `max_tokens`, priced
from the catalog, and 10 x N concurrent requests through a real gateway: exactly N are answered,
the rest refused (402, or 429 with `Retry-After`), the ledger's invariants hold, the final
balance is not negative and every hold is resolved. Each answered request costs a little less
than it held (the prompt estimate is an upper bound), so the test first checks that what N
settlements leave behind cannot pay for one more hold: the count is exact however the requests
interleave.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway, Sim, provider_env
from tests.e2e.test_billing_cost import books, grant_nanos, price_of
from tests.support.accounts import seed_account
from tests.support.server import serve_in_thread
from tollgate import money
from tollgate.app import create_app
from tollgate.billing.requests import estimate_prompt_tokens
from tollgate.canonical import Usage
from tollgate.settings import load_settings

N = 10
BURST = 10 * N  # the bar: 10 x N concurrent requests for a balance worth N holds
MODEL = "gpt-5.5-pro"  # $30 in, $180 out per million: a few hundred tokens cost cents
VISA = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}


def chat_body(max_tokens: int, prompt: str = "Count the ships in the harbour.") -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": max_tokens,
    }
    return json.dumps(body).encode()


def hold_of(body: bytes, max_tokens: int) -> int:
    """What the gateway holds for `body`: its prompt estimate plus the whole output cap."""
    return price_of("openai", MODEL, Usage(estimate_prompt_tokens(body), max_tokens))


async def burst(
    gateway: Gateway, account_id: str, token: str, body: bytes, count: int, max_tokens: int
) -> list[httpx.Response]:
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        # Every answer uses its whole cap, and answers slowly, so holds overlap.
        "x-sim-output-tokens": str(max_tokens),
        "x-sim-latency-ms": "150",
    }
    url = f"{gateway.base('openai', account_id)}/chat/completions"
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(client.post(url, headers=headers, content=body) for _ in range(count))
            )
        )


def charged(response: httpx.Response) -> int:
    usage = response.json()["usage"]
    actual = Usage(
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
        cached_input_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        reasoning_tokens=usage["completion_tokens_details"]["reasoning_tokens"],
    )
    cost = price_of("openai", MODEL, actual)
    assert money.from_dollars(response.headers["cf-aig-cost"]) == cost
    return cost


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_gateway(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Gateway]:
    """The e2e gateway on SQLite (the shared fixture) and on PostgreSQL (the session's fresh
    database; every test seeds its own accounts there)."""
    if request.param == "sqlite":
        with request.getfixturevalue("start_gateway")() as running:
            yield running
        return
    database_url = request.getfixturevalue("postgres_url")
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            **provider_env(sim.url),
        }
    )
    account = seed_account(database_url)
    with serve_in_thread(create_app(settings)) as url:
        yield Gateway(url, database_url, account)


def billing(gateway: Gateway, token: str) -> cloudflare.Cloudflare:
    return cloudflare.Cloudflare(
        api_token=token, base_url=f"{gateway.url}/client/v4", max_retries=0
    )


def billing_url(gateway: Gateway, account_id: str, path: str) -> str:
    return f"{gateway.url}/client/v4/accounts/{account_id}/ai-gateway/billing{path}"


def test_a_balance_worth_n_holds_admits_exactly_n_of_10n(any_gateway: Gateway) -> None:
    gateway = any_gateway
    max_tokens = 400
    body = chat_body(max_tokens)
    hold = hold_of(body, max_tokens)
    output = price_of("openai", MODEL, Usage(0, max_tokens))  # each answer costs at least this
    assert N * (hold - output) < hold  # so N settlements cannot free room for one more hold
    seeded = seed_account(gateway.database_url, credits_cents=0, name="exactly N")
    grant_nanos(gateway, seeded.account_id, N * hold)

    responses = asyncio.run(
        burst(gateway, seeded.account_id, seeded.token, body, BURST, max_tokens)
    )

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == N, [r.status_code for r in responses]
    assert {r.status_code for r in refused} == {402}
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_credits"}
    spent = sum(charged(r) for r in ok)
    after = books(gateway, seeded.account_id)  # check_invariants passed on this snapshot
    assert after.balance_nanos == N * hold - spent >= 0
    assert after.held_nanos == 0 and after.open_holds == []
    assert [e.kind for e in after.entries] == ["grant"] + ["usage"] * N  # refusals: nothing
    # Each admitted request: a settled hold row, or on SQLite's credit lease its `lease:` entry.
    leased = [e for e in after.entries if (e.reference or "").startswith("lease:")]
    assert [h.state for h in after.holds] == ["settled"] * (N - len(leased))


def test_a_spending_limit_worth_n_holds_admits_exactly_n_of_10n(any_gateway: Gateway) -> None:
    gateway = any_gateway
    limit_cents = 100  # the smallest account limit: $1
    limit = money.from_cents(limit_cents)
    per_token = price_of("openai", MODEL, Usage(0, 1))
    prompt = price_of("openai", MODEL, Usage(estimate_prompt_tokens(chat_body(1000)), 0))
    max_tokens = (limit // N - prompt) // per_token  # the largest cap N holds fit in
    body = chat_body(max_tokens)
    hold = hold_of(body, max_tokens)
    assert N * hold <= limit < (N + 1) * hold
    seeded = seed_account(gateway.database_url, name="limited")  # $100: the limit binds
    client = billing(gateway, seeded.token)
    with pytest.warns(DeprecationWarning):  # deprecated at Cloudflare; live in tollgate
        client.ai_gateway.billing.spending_limit.create(
            account_id=seeded.account_id, amount=limit_cents, duration="daily", strategy="sliding"
        )
    client.close()
    before = books(gateway, seeded.account_id)

    responses = asyncio.run(
        burst(gateway, seeded.account_id, seeded.token, body, BURST, max_tokens)
    )

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == N, [r.status_code for r in responses]
    spent = sum(charged(r) for r in ok)
    assert limit - spent < hold  # what N settlements left under the limit fits no other hold
    assert {r.status_code for r in refused} == {429}
    for response in refused:
        assert response.json()["error"]["code"] == "spend_limit_exceeded"
        assert int(response.headers["retry-after"]) > 0
        assert "Retry after" in response.json()["error"]["message"]
    after = books(gateway, seeded.account_id)
    assert after.balance_nanos == before.balance_nanos - spent >= 0
    assert after.held_nanos == 0 and after.open_holds == []
    assert [h.state for h in after.holds] == ["settled"] * N


def test_a_limit_set_after_traffic_binds_at_once(gateway: Gateway, sim: Sim) -> None:
    seeded = seed_account(gateway.database_url, name="limited later")
    warm = asyncio.run(burst(gateway, seeded.account_id, seeded.token, chat_body(16), 1, 16))
    assert warm[0].status_code == 200  # the meter has now cached "no account limit"
    response = httpx.post(
        billing_url(gateway, seeded.account_id, "/spending-limit"),
        headers={"authorization": f"Bearer {seeded.token}"},
        json={"amount": 100, "duration": "daily", "strategy": "sliding"},
    )
    assert response.status_code == 200, response.text
    max_tokens = 1000
    body = chat_body(max_tokens)
    fits = money.from_cents(100) // hold_of(body, max_tokens)
    assert fits < BURST
    responses = asyncio.run(
        burst(gateway, seeded.account_id, seeded.token, body, BURST, max_tokens)
    )
    admitted = sum(r.status_code == 200 for r in responses)
    assert admitted <= fits, f"{admitted} admitted under a limit that fits {fits}"


# --- auto top-up --------------------------------------------------------------------------------


def test_auto_topup_runs_once_when_real_requests_cross_the_threshold(
    any_gateway: Gateway,
) -> None:
    gateway = any_gateway
    threshold_cents, amount_cents = 500, 1000
    max_tokens = 200
    body = chat_body(max_tokens)
    seeded = seed_account(gateway.database_url, credits_cents=0, name="auto top-up")
    start = money.from_cents(threshold_cents) + hold_of(body, max_tokens)  # one hold above
    grant_nanos(gateway, seeded.account_id, start)
    # Traffic before auto top-up is configured: the gateway has seen (and cached) "none".
    warm = asyncio.run(burst(gateway, seeded.account_id, seeded.token, chat_body(8), 1, 8))
    assert warm[0].status_code == 200
    start -= charged(warm[0])
    card = httpx.post(
        billing_url(gateway, seeded.account_id, "/payment-method"),
        headers={"authorization": f"Bearer {seeded.token}"},
        json=VISA,
    )
    assert card.status_code == 200, card.text
    client = billing(gateway, seeded.token)
    config = client.ai_gateway.billing.topup.config.create(
        account_id=seeded.account_id, amount=amount_cents, threshold=threshold_cents
    )
    assert (config.amount, config.threshold) == (amount_cents, threshold_cents)

    # Several settles land below the threshold at once: still one charge for the crossing.
    responses = asyncio.run(burst(gateway, seeded.account_id, seeded.token, body, N, max_tokens))
    assert [r.status_code for r in responses] == [200] * N
    spent = sum(charged(r) for r in responses)
    assert start - spent < money.from_cents(threshold_cents)

    deadline = time.monotonic() + 5
    topups: list[Any] = []
    while time.monotonic() < deadline:
        topups = [e for e in books(gateway, seeded.account_id).entries if e.kind == "auto_topup"]
        if topups:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a second charge, if one were coming, would have landed by now
    after = books(gateway, seeded.account_id)
    topups = [e for e in after.entries if e.kind == "auto_topup"]
    assert [e.amount_nanos for e in topups] == [money.from_cents(amount_cents)]
    assert after.balance_nanos == start - spent + money.from_cents(amount_cents)
    assert after.open_holds == []

    # Back above the threshold: more spending does not charge again.
    more = asyncio.run(burst(gateway, seeded.account_id, seeded.token, body, 2, max_tokens))
    assert [r.status_code for r in more] == [200, 200]
    time.sleep(0.3)
    final = books(gateway, seeded.account_id)
    assert [e.kind for e in final.entries].count("auto_topup") == 1
    state = client.ai_gateway.billing.topup.config.get(account_id=seeded.account_id)
    assert (state.error, state.disabled_reason) == (None, None)
    balance = client.ai_gateway.billing.credit_balance(account_id=seeded.account_id)
    assert money.from_dollars(str(balance.balance)) == final.balance_nanos
    client.close()
