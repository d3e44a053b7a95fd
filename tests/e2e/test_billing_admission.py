"""Unified Billing end to end, admission side: what is refused, capped, released or estimated.

- 402 `insufficient_credits` in the error format of the endpoint called, naming the amount
  needed and the amount available, with nothing forwarded and the ledger untouched;
- an output cap lowered to what the balance affords (`cf-aig-max-tokens-capped`, and the
  upstream body carries it), and a 402 below the useful minimum, at the exact boundary;
- an unpriced model refused with 400 before forwarding, yet passed through (unbilled) with the
  client's own key;
- a failed or unreachable upstream never billed; a stream broken half way billed once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import (
    CATALOG,
    Books,
    Recorder,
    anthropic_client,
    books,
    cost_comment,
    grant_nanos,
    header_nanos,
    one_usage_entry,
    openai_client,
    openai_usage,
    price_of,
)
from tests.support.accounts import seed_account
from tests.support.server import free_port
from tollgate.billing.ledger import usd
from tollgate.billing.meter import BYTES_PER_OUTPUT_TOKEN, MIN_USEFUL_OUTPUT_TOKENS
from tollgate.billing.requests import estimate_prompt_tokens
from tollgate.canonical import Usage
from tollgate.sim import text as simtext
from tollgate.unified import DEFAULT_MAX_TOKENS

StartGateway = Callable[..., AbstractContextManager[Gateway]]
HELLO: Any = [{"role": "user", "content": "Hello there, how are you today?"}]


def poor_account(gateway: Gateway, nanos: int) -> tuple[str, str]:
    """A second account holding exactly `nanos` of credits: (account id, token)."""
    seeded = seed_account(gateway.database_url, credits_cents=0, name="poor account")
    if nanos:
        grant_nanos(gateway, seeded.account_id, nanos)
    return seeded.account_id, seeded.token


def unchanged(gateway: Gateway, account_id: str, before: Books) -> None:
    after = books(gateway, account_id)
    assert after.entries == before.entries
    assert (after.balance_nanos, after.held_nanos) == (before.balance_nanos, 0)
    assert after.open_holds == []


def needed_nanos(provider: str, model: str, body: bytes, max_tokens: int) -> int:
    """What the gateway holds: the prompt estimate of the body plus the output cap."""
    return price_of(provider, model, Usage(estimate_prompt_tokens(body), max_tokens))


def says_needed_and_available(message: str, needed: int, available: int) -> None:
    assert f"needs up to {usd(needed)}" in message, message
    assert f"{usd(available)} is available" in message, message


# --- 402 insufficient_credits, in each client format ------------------------------------------


def test_402_in_openai_format(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 10_000_000)  # one cent
    before = books(gateway, account)
    sim.clear()
    recorder = Recorder()
    client = openai_client(gateway, recorder, "openai", account_id=account, token=token)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=8000)
    assert caught.value.status_code == 402
    error = caught.value.response.json()["error"]
    assert (error["code"], error["type"]) == ("insufficient_credits", "insufficient_quota")
    needed = needed_nanos("openai", "gpt-4o", recorder.last.request_body, 8000)
    says_needed_and_available(error["message"], needed, 10_000_000)
    assert sim.requests() == []
    unchanged(gateway, account, before)


def test_402_in_anthropic_format(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 10_000_000)
    before = books(gateway, account)
    sim.clear()
    recorder = Recorder()
    client = anthropic.Anthropic(
        api_key=token,
        base_url=gateway.base("anthropic", account),
        max_retries=0,
        http_client=recorder.client(),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=8000, messages=HELLO)
    assert caught.value.status_code == 402
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert body["error"]["code"] == "insufficient_credits"
    needed = needed_nanos("anthropic", "claude-sonnet-4-6", recorder.last.request_body, 8000)
    says_needed_and_available(body["error"]["message"], needed, 10_000_000)
    assert sim.requests() == []
    unchanged(gateway, account, before)


def test_402_in_google_format(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 10_000_000)
    before = books(gateway, account)
    sim.clear()
    recorder = Recorder()
    client = genai.Client(
        api_key=token,
        http_options=genai_types.HttpOptions(
            base_url=gateway.base("google-ai-studio", account),
            api_version="v1beta",
            httpx_client=recorder.client(),
        ),
    )
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(
            model="gemini-2.5-pro",
            contents="Hello there",
            config=genai_types.GenerateContentConfig(max_output_tokens=8000),
        )
    assert (caught.value.code, caught.value.status) == (402, "RESOURCE_EXHAUSTED")
    error = json.loads(recorder.last.body)["error"]
    assert error["code"] == 402 and error["details"] == [{"reason": "insufficient_credits"}]
    needed = needed_nanos("google-ai-studio", "gemini-2.5-pro", recorder.last.request_body, 8000)
    says_needed_and_available(error["message"], needed, 10_000_000)
    assert sim.requests() == []
    unchanged(gateway, account, before)


def test_402_through_compat_in_openai_format(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 0)
    before = books(gateway, account)
    sim.clear()
    recorder = Recorder()
    client = openai_client(gateway, recorder, "compat", account_id=account, token=token)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="anthropic/claude-sonnet-4-6", messages=HELLO, max_tokens=100, stream=True
        )
    assert caught.value.status_code == 402
    error = caught.value.response.json()["error"]
    assert error["code"] == "insufficient_credits"
    needed = needed_nanos("anthropic", "claude-sonnet-4-6", recorder.last.request_body, 100)
    says_needed_and_available(error["message"], needed, 0)
    assert sim.requests() == []
    unchanged(gateway, account, before)


# --- the output cap lowered to what the balance affords ---------------------------------------


def affordable_tokens(provider: str, model: str, body: bytes, available: int) -> int:
    """The cap the balance affords, from the catalog (the meter's documented rule)."""
    price = CATALOG.lookup(provider, model)
    assert price is not None
    prompt = CATALOG.cost(provider, price, Usage(estimate_prompt_tokens(body), 0))
    per_million = CATALOG.cost(provider, price, Usage(0, 1_000_000))
    return min((available - prompt) * 1_000_000 // per_million, price.max_output_tokens)


def test_openai_request_without_max_tokens_is_capped_to_the_balance(
    gateway: Gateway, sim: Sim
) -> None:
    account, token = poor_account(gateway, 50_000_000)  # five cents: gpt-4o's 16384 cost more
    before = books(gateway, account)
    sim.clear()
    recorder = Recorder()
    client = openai_client(gateway, recorder, "openai", account_id=account, token=token)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    cap = affordable_tokens("openai", "gpt-4o", recorder.last.request_body, 50_000_000)
    assert MIN_USEFUL_OUTPUT_TOKENS <= cap < 16384
    assert raw.headers["cf-aig-max-tokens-capped"] == str(cap)
    [upstream] = sim.requests()
    sent = json.loads(str(upstream["body"]))
    assert sent["max_completion_tokens"] == cap and "max_tokens" not in sent
    reply = raw.parse()
    assert reply.usage is not None
    cost = price_of("openai", "gpt-4o", openai_usage(reply.usage))
    after = books(gateway, account)
    assert one_usage_entry(after, before).amount_nanos == -cost
    assert after.balance_nanos == 50_000_000 - cost >= 0 and not after.open_holds
    assert header_nanos(recorder.last.headers, "cf-aig-credits-remaining") == after.balance_nanos


def test_gemini_request_without_max_output_tokens_is_capped(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 50_000_000)
    sim.clear()
    recorder = Recorder()
    client = genai.Client(
        api_key=token,
        http_options=genai_types.HttpOptions(
            base_url=gateway.base("google-ai-studio", account),
            api_version="v1beta",
            httpx_client=recorder.client(),
        ),
    )
    client.models.generate_content(model="gemini-2.5-pro", contents="Hello there")
    cap = affordable_tokens(
        "google-ai-studio", "gemini-2.5-pro", recorder.last.request_body, 50_000_000
    )
    assert MIN_USEFUL_OUTPUT_TOKENS <= cap < 65536
    assert recorder.last.headers["cf-aig-max-tokens-capped"] == str(cap)
    [upstream] = sim.requests()
    assert json.loads(str(upstream["body"]))["generationConfig"]["maxOutputTokens"] == cap
    assert books(gateway, account).balance_nanos >= 0


def test_compat_to_anthropic_without_max_tokens_is_capped(gateway: Gateway, sim: Sim) -> None:
    account, token = poor_account(gateway, 50_000_000)
    sim.clear()
    recorder = Recorder()
    client = openai_client(gateway, recorder, "compat", account_id=account, token=token)
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-6", messages=HELLO
    )
    cap = affordable_tokens(
        "anthropic", "claude-sonnet-4-6", recorder.last.request_body, 50_000_000
    )
    assert MIN_USEFUL_OUTPUT_TOKENS <= cap < 128000
    assert raw.headers["cf-aig-max-tokens-capped"] == str(cap)
    [upstream] = sim.requests()
    assert json.loads(str(upstream["body"]))["max_tokens"] == cap
    assert books(gateway, account).balance_nanos >= 0


def test_compat_to_anthropic_without_max_tokens_holds_the_default_it_sends(
    gateway: Gateway, sim: Sim
) -> None:
    """Anthropic requires max_tokens, so a translated request without one is sent the gateway's
    default (4096): the hold is for that, not for the model's whole maximum (128,000 tokens,
    $1.92 of output), so a $1 balance is neither capped nor refused."""
    account, token = poor_account(gateway, 1_000_000_000)  # $1
    sim.clear()
    recorder = Recorder()
    client = openai_client(gateway, recorder, "compat", account_id=account, token=token)
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-6", messages=HELLO
    )
    assert "cf-aig-max-tokens-capped" not in raw.headers
    [upstream] = sim.requests()
    assert json.loads(str(upstream["body"]))["max_tokens"] == DEFAULT_MAX_TOKENS
    # What was held, seen from outside: a balance of exactly that is admitted as it is, and a
    # nano-dollar less has its output capped.
    body = recorder.last.request_body
    held = needed_nanos("anthropic", "claude-sonnet-4-6", body, DEFAULT_MAX_TOKENS)
    for balance, capped in ((held, False), (held - 1, True)):
        account, token = poor_account(gateway, balance)
        client = openai_client(gateway, recorder, "compat", account_id=account, token=token)
        raw = client.chat.completions.with_raw_response.create(
            model="anthropic/claude-sonnet-4-6", messages=HELLO
        )
        assert ("cf-aig-max-tokens-capped" in raw.headers) is capped, balance


@pytest.mark.parametrize(
    ("extra_nanos", "outcome"), [(0, MIN_USEFUL_OUTPUT_TOKENS), (-1, 402)], ids=["64", "63.99"]
)
def test_cap_at_the_useful_minimum_and_just_below(
    gateway: Gateway, sim: Sim, extra_nanos: int, outcome: int
) -> None:
    """A balance worth exactly the prompt plus 64 output tokens is capped at 64; a nano-dollar
    less is refused with 402."""
    body = json.dumps({"model": "gpt-4o", "messages": HELLO}).encode()
    prompt = price_of("openai", "gpt-4o", Usage(estimate_prompt_tokens(body), 0))
    minimum = price_of("openai", "gpt-4o", Usage(0, MIN_USEFUL_OUTPUT_TOKENS))
    account, token = poor_account(gateway, prompt + minimum + extra_nanos)
    before = books(gateway, account)
    sim.clear()
    response = httpx.post(
        f"{gateway.base('openai', account)}/chat/completions",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        content=body,
    )
    if outcome == 402:
        assert response.status_code == 402, response.text
        assert response.json()["error"]["code"] == "insufficient_credits"
        assert sim.requests() == []
        unchanged(gateway, account, before)
        return
    assert response.status_code == 200, response.text
    assert response.headers["cf-aig-max-tokens-capped"] == str(MIN_USEFUL_OUTPUT_TOKENS)
    [upstream] = sim.requests()
    assert json.loads(str(upstream["body"]))["max_completion_tokens"] == MIN_USEFUL_OUTPUT_TOKENS
    after = books(gateway, account)
    assert after.balance_nanos >= 0 and not after.open_holds


# --- unpriced models --------------------------------------------------------------------------


def test_unpriced_model_is_refused_on_unified_billing_and_passes_with_own_key(
    gateway: Gateway, sim: Sim
) -> None:
    before = books(gateway)
    sim.clear()
    recorder = Recorder()
    managed = openai_client(gateway, recorder)
    with pytest.raises(openai.BadRequestError) as caught:
        managed.chat.completions.create(model="gpt-unpriced-9", messages=HELLO)
    error = caught.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("unpriced_model", "model")
    compat = openai_client(gateway, recorder, base="compat")
    with pytest.raises(openai.BadRequestError) as caught:
        compat.chat.completions.create(model="anthropic/claude-unpriced-9", messages=HELLO)
    assert caught.value.response.json()["error"]["code"] == "unpriced_model"
    assert sim.requests() == []
    unchanged(gateway, gateway.account.account_id, before)

    own_key = openai.OpenAI(
        api_key="sk-client-own-key",
        base_url=gateway.base("openai"),
        max_retries=0,
        default_headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
        http_client=recorder.client(),
    )
    reply = own_key.chat.completions.create(model="gpt-unpriced-9", messages=HELLO)
    assert reply.choices[0].message.content
    [upstream] = sim.requests()
    assert upstream["headers"]["authorization"] == "Bearer sk-client-own-key"  # type: ignore[index]
    assert "cf-aig-cost" not in recorder.last.headers
    after = books(gateway)
    assert after.entries == before.entries and after.holds == before.holds  # not even a hold


# --- failed upstreams are not billed; a broken stream is billed once --------------------------


@pytest.mark.parametrize("status", [500, 429])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failed_upstream_is_not_billed(
    gateway: Gateway, sim: Sim, status: int, stream: bool
) -> None:
    before = books(gateway)
    client = openai_client(gateway, Recorder())
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            max_tokens=100,
            stream=stream,
            extra_headers={"x-sim-error": str(status)},
        )
    assert caught.value.status_code == status
    after = books(gateway)
    unchanged(gateway, gateway.account.account_id, before)
    [hold] = after.holds  # it was held, then released
    assert hold.state == "released"


def test_failed_translated_upstream_is_not_billed(gateway: Gateway, sim: Sim) -> None:
    before = books(gateway)
    client = openai_client(gateway, Recorder(), base="compat")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="anthropic/claude-sonnet-4-6",
            messages=[{"role": "user", "content": "Hi [sim error=500]"}],
            max_tokens=100,
        )
    assert caught.value.status_code == 500
    unchanged(gateway, gateway.account.account_id, before)
    assert [hold.state for hold in books(gateway).holds] == ["released"]


def test_unreachable_upstream_is_not_billed(start_gateway: StartGateway, sim: Sim) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with start_gateway(
        TOLLGATE_PROVIDERS__OPENAI__BASE_URL=f"{closed}/v1",
        TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=closed,
    ) as gateway:
        before = books(gateway)
        for base, model in (("openai", "gpt-4o"), ("compat", "anthropic/claude-sonnet-4-6")):
            client = openai_client(gateway, Recorder(), base=base)
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model=model, messages=HELLO, max_tokens=50)
            assert caught.value.status_code == 502
        unchanged(gateway, gateway.account.account_id, before)
        assert [hold.state for hold in books(gateway).holds] == ["released", "released"]


def test_openai_stream_broken_midway_is_billed_once_as_an_estimate(
    gateway: Gateway, sim: Sim
) -> None:
    """No usage was seen: the prompt estimate plus a quarter of the relayed bytes (at most the
    200 tokens held), once."""
    recorder = Recorder()
    client = openai_client(gateway, recorder)
    before = books(gateway)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-drop-after": "4", "x-sim-output-tokens": "100"},
        ):
            pass
    raw = recorder.last.body
    relayed = raw[: raw.index(b"event: error")]  # what the upstream produced, passed as is
    assert relayed.count(b"data: ") == 4
    estimate = Usage(
        estimate_prompt_tokens(recorder.last.request_body),
        min(math.ceil(len(relayed) / BYTES_PER_OUTPUT_TOKEN), 200),
    )
    expected = price_of("openai", "gpt-4o", estimate)
    assert_billed_once_estimated(gateway, before, raw, expected)


def test_anthropic_stream_broken_midway_is_billed_once_for_what_it_produced(
    gateway: Gateway, sim: Sim
) -> None:
    """`message_start` reports the input and one output token; the stream then produced more
    text before it broke. The charge must cover what was relayed, flagged as an estimate."""
    recorder = Recorder()
    client = anthropic_client(gateway, recorder)
    before = books(gateway)
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=200,
            messages=HELLO,
            extra_headers={"x-sim-drop-after": "8", "x-sim-output-tokens": "100"},
        ) as events,
    ):
        for _ in events:
            pass
    raw = recorder.last.body
    relayed = raw[: raw.index(b"event: error")]
    assert relayed.count(b"event: content_block_delta") >= 3
    start = json.loads(relayed.split(b"data: ", 2)[1].split(b"\n", 1)[0])["message"]["usage"]
    measured_input = sum(start[key] for key in _ANTHROPIC_INPUT)
    # The estimate's output: the relayed bytes / 4, but never above the 200 tokens held.
    relayed_output = min(math.ceil(len(relayed) / BYTES_PER_OUTPUT_TOKEN), 200)
    at_least = price_of("anthropic", "claude-sonnet-4-6", Usage(measured_input, relayed_output))
    after = books(gateway)
    entry = one_usage_entry(after, before)
    assert -entry.amount_nanos >= at_least, (entry, at_least)
    assert_billed_once_estimated(gateway, before, raw, -entry.amount_nanos)


def test_translated_stream_broken_midway_is_billed_once_for_what_it_produced(
    gateway: Gateway, sim: Sim
) -> None:
    """/compat to Anthropic: the text the client received is covered, as an estimate."""
    prompt = "Tell me a long story please [sim drop-after=8 output-tokens=100]"
    recorder = Recorder()
    client = openai_client(gateway, recorder, base="compat")
    before = books(gateway)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="anthropic/claude-sonnet-4-6",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=200,
            stream=True,
        ):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert simtext.count_tokens(received) >= 3
    at_least = price_of(
        "anthropic",
        "claude-sonnet-4-6",
        Usage(simtext.prompt_tokens([prompt]), simtext.count_tokens(received)),
    )
    entry = one_usage_entry(books(gateway), before)
    assert -entry.amount_nanos >= at_least, (entry, at_least)
    assert_billed_once_estimated(gateway, before, recorder.last.body, -entry.amount_nanos)


def test_client_disconnect_mid_stream_is_billed_once_for_what_was_relayed(
    gateway: Gateway, sim: Sim
) -> None:
    """The client walks away from an Anthropic stream: `message_start` showed the input and one
    output token, but more was relayed. Billed once, covering what it received, estimated."""
    client = anthropic.Anthropic(
        api_key=gateway.account.token, base_url=gateway.base("anthropic"), max_retries=0
    )
    before = books(gateway)
    received, input_tokens = "", 0
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=400,
        messages=HELLO,
        extra_headers={"x-sim-output-tokens": "200", "x-sim-chunk-delay-ms": "20"},
    ) as events:
        for event in events:
            if event.type == "message_start":
                usage = event.message.usage
                input_tokens = usage.input_tokens + (usage.cache_read_input_tokens or 0)
            elif event.type == "text":
                received += event.text
            if simtext.count_tokens(received) >= 8:
                break  # leaving the block closes the connection
    at_least = price_of(
        "anthropic", "claude-sonnet-4-6", Usage(input_tokens, simtext.count_tokens(received))
    )
    deadline = time.monotonic() + 5
    while not books(gateway).since(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    after = books(gateway)
    entry = one_usage_entry(after, before)
    assert -entry.amount_nanos >= at_least, (entry, at_least)
    assert entry.note.endswith("(estimated)")
    assert [hold.state for hold in after.holds] == ["settled"] and after.held_nanos == 0


_ANTHROPIC_INPUT = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def assert_billed_once_estimated(gateway: Gateway, before: Books, raw: bytes, cost: int) -> None:
    time.sleep(0.2)  # nothing else may settle it again later
    after = books(gateway)
    entry = one_usage_entry(after, before)
    assert entry.amount_nanos == -cost and entry.note.endswith("(estimated)")
    assert [hold.state for hold in after.holds] == ["settled"]
    assert cost_comment(raw) == (cost, after.balance_nanos, True)
