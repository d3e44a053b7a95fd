"""Upstream faults end to end: every way an upstream fails, through the official SDKs, and the
books after each one (issue 9: "faults survived, nothing lost").

The matrix, for the OpenAI and Anthropic formats, streamed and not, with Unified Billing
(fault: what the client sees; what is billed):

- connection refused, or reset before any response: 502 `upstream_unreachable`; nothing.
- reset mid-body (not streamed): 502 `upstream_error`; nothing (the client got nothing).
- reset mid-stream: the events so far, then the gateway's error event; once, estimated.
- reset after the final usage event: the whole answer, then the error event; once, measured.
- slow first byte (past `cf-aig-request-timeout`): 504 `upstream_timeout`; nothing.
- a silence between chunks longer than that timeout: the whole answer (the timeout is to the
  first byte, and tollgate has no idle timeout); once, measured.
- a stalled stream: the client's own read timeout ends it; once, estimated.
- junk lines between events: the whole answer (SSE parsers skip them); once, measured.
- a truncated JSON event, then a clean end: the SDK's parse error or the gateway's error event;
  once, estimated.
- no `[DONE]` / `message_stop`: the whole answer, no error; once, measured.
- a clean end before the usage (no finish chunk / `message_delta`): the error event; once,
  estimated, the output never above `max_tokens`.
- a storm of 429, 500 and 529: that status and the provider's own error body, after 1 attempt
  or the gateway's 3; nothing. When retries answer (a transient storm): once each, measured.

Every check ends with `check_invariants` (via `books`): the entries sum to the balance, no hold
is left open, every settled hold has exactly one usage entry. "Estimated" charges follow
docs/billing.md section 5: input as measured (or the prompt estimate), output the larger of the
count seen and the relayed bytes / 4, at most the request's `max_tokens`.

Connection-level faults come from `tests.support.fault_proxy.FaultProxy`, a raw TCP relay to
the simulator that resets (RST) the connection where a request's `x-fault` header says;
everything else is a simulator control (`x-sim-*`). One gateway per module and engine (SQLite
with credit leases, PostgreSQL with holds) serves every test; each test reads the books before
and after itself, and the gateway leaves nothing held or leased when it stops (`drained`). On
PostgreSQL run one test of each kind of ending (release, measured, estimated, capped, storms).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import cloudflare
import httpx2
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway, Sim, provider_env
from tests.e2e.test_billing_cost import (
    Books,
    Recorder,
    anthropic_usage,
    books,
    cost_comment,
    openai_usage,
    price_of,
    run_store,
)
from tests.support.accounts import seed_account
from tests.support.fault_proxy import FaultProxy
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import free_port, serve_in_thread
from tollgate.app import create_app
from tollgate.billing.ledger import check_invariants
from tollgate.billing.meter import BYTES_PER_OUTPUT_TOKEN
from tollgate.billing.requests import estimate_prompt_tokens
from tollgate.canonical import Usage
from tollgate.settings import load_settings
from tollgate.store import Store

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
FORMATS = ("openai", "anthropic")
PROMPT = "Tell me a long story about the sea, please"
MAX_TOKENS = 400


# --- gateways ---------------------------------------------------------------------------------


@contextmanager
def serve_gateway(
    directory: Path, database_url: str | None, sim: Sim, **env: str
) -> Iterator[Gateway]:
    """A gateway on the simulator (as `start_gateway` starts one), for a whole module."""
    database_url = database_url or f"sqlite:///{directory / 'gw.db'}"
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(directory / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            **provider_env(sim.url),
            **env,
        }
    )
    account = seed_account(database_url)
    with serve_in_thread(create_app(settings)) as url:
        yield Gateway(url, database_url, account)
    drained(database_url, account.account_id)


def drained(database_url: str, account_id: str) -> None:
    """After the gateway stopped: nothing held, nothing leased. On SQLite a request admitted
    against a credit lease has no hold row, and one never settled shows only here: its lease
    cannot be given back at shutdown."""

    async def check(store: Store) -> None:
        snapshot = await check_invariants(store, account_id)
        assert [hold for hold in snapshot.holds if hold.state == "open"] == []
        assert (snapshot.held_nanos, snapshot.leased_nanos) == (0, 0)

    run_store(database_url, check)


ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
# For the faults whose books end the way others' do (a release, a measured charge, an estimate
# of the same kind), which run on both engines: SQLite only, to keep the suite's time down.
SQLITE_ONLY = pytest.mark.parametrize("engine_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module", params=ENGINES)
def engine_url(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite in the module's directory; else the session's PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@dataclass
class Faulty:
    gateway: Gateway
    sim: Sim


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str | None, sim: Sim
) -> Iterator[Faulty]:
    """The gateway whose OpenAI and Anthropic upstreams are the simulator behind `FaultProxy`."""
    with FaultProxy(int(sim.url.rsplit(":", 1)[1])) as proxy:
        env = {
            "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": f"{proxy.url}/openai/v1",
            "TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL": f"{proxy.url}/anthropic",
        }
        directory = tmp_path_factory.mktemp("faults")
        with serve_gateway(directory, engine_url, sim, **env) as gateway:
            yield Faulty(gateway, sim)


@pytest.fixture(scope="module")
def refusing(
    tmp_path_factory: pytest.TempPathFactory, engine_url: str | None, sim: Sim
) -> Iterator[Gateway]:
    """A gateway whose OpenAI and Anthropic upstreams are a port nobody listens on."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {
        "TOLLGATE_PROVIDERS__OPENAI__BASE_URL": f"{closed}/v1",
        "TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL": closed,
    }
    with serve_gateway(tmp_path_factory.mktemp("refused"), engine_url, sim, **env) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def retrying(faulty: Faulty) -> str:
    """A gateway of the faulty one's account with retries on: 3 attempts, no delay."""
    client = cloudflare.Cloudflare(
        api_token=faulty.gateway.account.token,
        base_url=f"{faulty.gateway.url}/client/v4",
        max_retries=0,
    )
    client.ai_gateway.create(
        account_id=faulty.gateway.account.account_id,
        id="retrying",
        **{**REQUIRED_GATEWAY_FIELDS, "retry_max_attempts": 3, "retry_delay": 0},
    )
    return "retrying"


# --- one request through an official SDK ----------------------------------------------------


@dataclass
class Outcome:
    """What the SDK gave the caller: the text, the error it raised (if any), the usage it parsed
    from a complete answer, and the raw exchange (the whole response, read before the SDK)."""

    text: str = ""
    error: Exception | None = None
    usage: Usage | None = None
    raw: bytes = b""
    request_body: bytes = b""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


def ask(
    gateway: Gateway,
    fmt: str,
    stream: bool,
    headers: dict[str, str],
    *,
    max_tokens: int = MAX_TOKENS,
    gateway_id: str = "default",
    prompt: str = PROMPT,
) -> Outcome:
    recorder, outcome = Recorder(), Outcome()
    base = gateway.base(fmt, gateway=gateway_id)
    ask_in_format = _ask_openai if fmt == "openai" else _ask_anthropic
    messages = [{"role": "user", "content": prompt}]
    try:
        ask_in_format(
            gateway.account.token, base, recorder, stream, headers, max_tokens, messages, outcome
        )
    except Exception as exc:  # the fault under test: kept for the test to judge
        outcome.error = exc
    last = recorder.last
    outcome.raw, outcome.request_body, outcome.status = last.body, last.request_body, last.status
    outcome.headers = last.headers
    return outcome


def _ask_openai(
    token: str,
    base: str,
    recorder: Recorder,
    stream: bool,
    headers: dict[str, str],
    max_tokens: int,
    messages: Any,
    out: Outcome,
) -> None:
    client = openai.OpenAI(
        api_key=token, base_url=base, max_retries=0, http_client=recorder.client()
    )
    if not stream:
        completion = client.chat.completions.create(
            model=GPT, messages=messages, max_tokens=max_tokens, extra_headers=headers
        )
        assert completion.usage is not None
        out.text = completion.choices[0].message.content or ""
        out.usage = openai_usage(completion.usage)
        return
    for chunk in client.chat.completions.create(
        model=GPT,
        messages=messages,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    ):
        out.text += "".join(choice.delta.content or "" for choice in chunk.choices)
        if chunk.usage is not None:
            out.usage = openai_usage(chunk.usage)


def _ask_anthropic(
    token: str,
    base: str,
    recorder: Recorder,
    stream: bool,
    headers: dict[str, str],
    max_tokens: int,
    messages: Any,
    out: Outcome,
) -> None:
    client = anthropic.Anthropic(
        api_key=token, base_url=base, max_retries=0, http_client=recorder.client()
    )
    if not stream:
        message = client.messages.create(
            model=CLAUDE, max_tokens=max_tokens, messages=messages, extra_headers=headers
        )
        out.text, out.usage = _claude_text(message), anthropic_usage(message.usage)
        return
    with client.messages.stream(
        model=CLAUDE, max_tokens=max_tokens, messages=messages, extra_headers=headers
    ) as events:
        for piece in events.text_stream:
            out.text += piece
        snapshot = events.current_message_snapshot
    # Only a message that reached its message_delta has its final usage.
    if snapshot.stop_reason is not None:
        out.usage = anthropic_usage(snapshot.usage)


def _claude_text(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# --- the books ------------------------------------------------------------------------------


def provider_model(fmt: str) -> tuple[str, str]:
    return ("openai", GPT) if fmt == "openai" else ("anthropic", CLAUDE)


def nothing_billed(gateway: Gateway, before: Books) -> None:
    after = books(gateway)  # check_invariants: entries sum to the balance, holds match
    assert after.since(before) == []
    assert after.balance_nanos == before.balance_nanos
    assert after.open_holds == [] and after.held_nanos == 0


def billed_once(gateway: Gateway, before: Books, cost: int, *, estimated: bool) -> None:
    after = books(gateway)
    new = after.since(before)
    assert [entry.kind for entry in new] == ["usage"], new
    assert -new[0].amount_nanos == cost, (new[0], cost)
    assert new[0].note.endswith("(estimated)") == estimated, new[0].note
    assert after.balance_nanos == before.balance_nanos - cost
    assert after.open_holds == [] and after.held_nanos == 0


def measured(gateway: Gateway, before: Books, fmt: str, outcome: Outcome, stream: bool) -> None:
    """Billed once, exactly the usage the SDK parsed; the stream's cost comment says so."""
    assert outcome.error is None, outcome.error
    assert outcome.usage is not None
    cost = price_of(*provider_model(fmt), outcome.usage)
    billed_once(gateway, before, cost, estimated=False)
    if stream:
        assert cost_comment(outcome.raw)[::2] == (cost, False)


def gateway_tail_at(raw: bytes) -> int:
    """Where the bytes the gateway added after the upstream's begin: its error event, else its
    cost comment."""
    for marker in (b"event: error\ndata: {", b": cf-aig-cost="):
        at = raw.find(marker)
        if at >= 0 and (marker != b"event: error\ndata: {" or b"upstream_stream" in raw[at:]):
            return at
    return len(raw)


def estimate(fmt: str, outcome: Outcome, max_tokens: int = MAX_TOKENS) -> int:
    """docs/billing.md, "a stream that broke off": input as measured if the stream reported it
    (Anthropic's message_start), else the prompt estimate; output the larger of the count seen
    and the relayed bytes / 4 rounded up, at most the request's `max_tokens`."""
    relayed = outcome.raw[: gateway_tail_at(outcome.raw)]
    output = min(math.ceil(len(relayed) / BYTES_PER_OUTPUT_TOKEN), max_tokens)
    provider, model = provider_model(fmt)
    if fmt == "anthropic" and b"message_start" in relayed:
        start = _json_after(relayed, b"event: message_start\ndata: ")["message"]["usage"]
        measured_input = start["input_tokens"] + (start.get("cache_read_input_tokens") or 0)
        return price_of(provider, model, Usage(measured_input, max(output, start["output_tokens"])))
    return price_of(provider, model, Usage(estimate_prompt_tokens(outcome.request_body), output))


def _json_after(raw: bytes, prefix: bytes) -> Any:
    start = raw.index(prefix) + len(prefix)
    return json.loads(raw[start : raw.index(b"\n", start)])


def usage_in_stream(fmt: str, raw: bytes) -> Usage:
    """The final usage the upstream reported in a relayed stream, read the provider's way."""
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    if fmt == "openai":
        (usage,) = [e["usage"] for e in events if e.get("choices") == [] and e.get("usage")]
        return openai_usage(openai.types.CompletionUsage.model_validate(usage))
    merged: dict[str, Any] = {}
    for event in events:
        if event.get("type") == "message_start":
            merged.update(event["message"]["usage"])
        elif event.get("type") == "message_delta":
            merged.update(event["usage"])
    return anthropic_usage(anthropic.types.Usage.model_validate(merged))


def estimated_once(
    gateway: Gateway, before: Books, fmt: str, outcome: Outcome, max_tokens: int = MAX_TOKENS
) -> int:
    cost = estimate(fmt, outcome, max_tokens)
    billed_once(gateway, before, cost, estimated=True)
    assert cost_comment(outcome.raw)[::2] == (cost, True)
    return cost


# The simulator's answer: 40 tokens in 8 pieces. An OpenAI stream is then 12 events (role, 8
# pieces, finish, usage, [DONE]); an Anthropic one 14 (message_start, ping, block start, 8
# deltas, block stop, message_delta with the usage, message_stop).
SHAPE = {"x-sim-output-tokens": "40", "x-sim-chunks": "8"}
EVENTS = {"openai": 12, "anthropic": 14}
STREAMED = [pytest.param(True, id="stream"), pytest.param(False, id="whole")]


def upstream_error(outcome: Outcome, fmt: str, status: int, code: str) -> None:
    """The SDK raised the gateway's error `code` with `status`, in the format's own shape."""
    error = outcome.error
    assert isinstance(error, (openai.APIStatusError, anthropic.APIStatusError)), repr(error)
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict)
    inner = body if fmt == "openai" else body["error"]  # the SDKs unwrap OpenAI's "error"
    if fmt == "anthropic":
        assert body["type"] == "error"
    assert inner["code"] == code and inner["message"]


def stream_error_event(outcome: Outcome) -> None:
    """The stream ended with the gateway's in-band error event, and the SDK raised it."""
    assert isinstance(outcome.error, (openai.APIError, anthropic.APIError)), repr(outcome.error)
    assert b"event: error\ndata: {" in outcome.raw and b"upstream_stream" in outcome.raw


# --- connection level -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMED)
@pytest.mark.parametrize("fmt", FORMATS)
def test_connection_refused_is_a_502_and_never_billed(
    refusing: Gateway, fmt: str, stream: bool
) -> None:
    before = books(refusing)
    outcome = ask(refusing, fmt, stream, {})
    upstream_error(outcome, fmt, 502, "upstream_unreachable")
    nothing_billed(refusing, before)


@SQLITE_ONLY
@pytest.mark.parametrize("stream", STREAMED)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reset_before_any_response_is_a_502_and_never_billed(
    faulty: Faulty, fmt: str, stream: bool
) -> None:
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, stream, {"x-fault": "reset-before-response"})
    upstream_error(outcome, fmt, 502, "upstream_unreachable")
    nothing_billed(faulty.gateway, before)


@SQLITE_ONLY
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reset_mid_body_is_a_502_and_never_billed(faulty: Faulty, fmt: str) -> None:
    """A whole answer is read before anything is relayed: the client gets nothing of it."""
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, False, {"x-fault": "reset-mid-body", **SHAPE})
    upstream_error(outcome, fmt, 502, "upstream_error")
    nothing_billed(faulty.gateway, before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reset_mid_stream_ends_in_an_error_event_and_is_billed_once_estimated(
    faulty: Faulty, fmt: str
) -> None:
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, True, {"x-fault": "reset-after-events=6", **SHAPE})
    stream_error_event(outcome)
    assert outcome.text, "the events before the reset were relayed"
    estimated_once(faulty.gateway, before, fmt, outcome)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reset_after_the_final_usage_is_billed_the_usage(faulty: Faulty, fmt: str) -> None:
    """The usage event (OpenAI's last chunk, Anthropic's message_delta) carries the final
    counts: a reset after it loses only the closing event, so the charge is measured."""
    before = books(faulty.gateway)
    after_usage = f"reset-after-events={EVENTS[fmt] - 1}"
    outcome = ask(faulty.gateway, fmt, True, {"x-fault": after_usage, **SHAPE})
    stream_error_event(outcome)
    usage = usage_in_stream(fmt, outcome.raw)
    assert usage.output_tokens == 40
    billed_once(faulty.gateway, before, price_of(*provider_model(fmt), usage), estimated=False)


# --- slow upstreams -------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("stream", STREAMED)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_slow_first_byte_is_a_504_and_never_billed(
    faulty: Faulty, fmt: str, stream: bool
) -> None:
    before = books(faulty.gateway)
    started = time.monotonic()
    slow = {"cf-aig-request-timeout": "300", "x-sim-latency-ms": "5000"}
    outcome = ask(faulty.gateway, fmt, stream, slow)
    assert time.monotonic() - started < 4  # the gateway's timeout, not the upstream's answer
    upstream_error(outcome, fmt, 504, "upstream_timeout")
    nothing_billed(faulty.gateway, before)


@SQLITE_ONLY
@pytest.mark.parametrize("fmt", FORMATS)
def test_gaps_between_chunks_longer_than_the_timeout_do_not_cut_a_stream(
    faulty: Faulty, fmt: str
) -> None:
    """The request timeout is to the first byte (Cloudflare's rule); tollgate has no idle
    timeout between chunks: a stream that goes quiet for longer runs to its end and is billed
    its usage."""
    before = books(faulty.gateway)
    slow = {
        "cf-aig-request-timeout": "600",
        "x-fault": "pause-after-events=3",  # a 0.8 s silence after the third event
        "x-fault-pause-ms": "800",
        **SHAPE,
    }
    started = time.monotonic()
    outcome = ask(faulty.gateway, fmt, True, slow)
    assert time.monotonic() - started >= 0.8  # the silence happened
    assert outcome.usage is not None and outcome.usage.output_tokens == 40
    measured(faulty.gateway, before, fmt, outcome, stream=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stalled_stream_the_client_gives_up_on_is_billed_once_estimated(
    faulty: Faulty, fmt: str
) -> None:
    """No idle timeout, so a stalled stream lasts until the client's own read timeout: the
    gateway sees it leave, closes the upstream, and charges what was relayed, once."""
    gateway = faulty.gateway
    before = books(gateway)
    stall = {"x-sim-chunk-delay-ms": "3000", **SHAPE}  # the first event, then 3 s of nothing
    timeout = 0.5  # seconds, for each read: longer than the gateway needs, shorter than the stall
    # Once the stream has started, the Anthropic SDK lets its transport's timeout through.
    with pytest.raises((openai.APITimeoutError, anthropic.APITimeoutError, httpx2.ReadTimeout)):
        if fmt == "openai":
            client = openai.OpenAI(
                api_key=gateway.account.token,
                base_url=gateway.base("openai"),
                max_retries=0,
                timeout=timeout,
            )
            for _ in client.chat.completions.create(
                model=GPT,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=MAX_TOKENS,
                stream=True,
                extra_headers=stall,
            ):
                pass
        else:
            claude = anthropic.Anthropic(
                api_key=gateway.account.token,
                base_url=gateway.base("anthropic"),
                max_retries=0,
                timeout=timeout,
            )
            with claude.messages.stream(
                model=CLAUDE,
                max_tokens=MAX_TOKENS,
                messages=[{"role": "user", "content": PROMPT}],
                extra_headers=stall,
            ) as events:
                for _ in events:
                    pass
    deadline = time.monotonic() + 5
    while not books(gateway).since(before) and time.monotonic() < deadline:
        time.sleep(0.2)
    after = books(gateway)
    (entry,) = after.since(before)
    assert entry.kind == "usage" and entry.note.endswith("(estimated)"), entry
    # One event was relayed (OpenAI's role chunk, Anthropic's message_start): a few hundred
    # bytes, far below the hold.
    assert 0 < -entry.amount_nanos < price_of(*provider_model(fmt), Usage(100, 100))
    assert after.open_holds == [] and after.held_nanos == 0


# --- malformed streams ----------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("fmt", FORMATS)
def test_junk_lines_between_events_are_skipped_and_the_usage_billed(
    faulty: Faulty, fmt: str
) -> None:
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, True, {"x-sim-junk-lines": "2", **SHAPE})
    assert outcome.raw.count(b"<garbage>") >= 2 * EVENTS[fmt]  # relayed as they came
    assert outcome.usage is not None and outcome.usage.output_tokens == 40
    measured(faulty.gateway, before, fmt, outcome, stream=True)


@SQLITE_ONLY
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_truncated_json_event_then_the_end_is_an_error_billed_once_estimated(
    faulty: Faulty, fmt: str
) -> None:
    """The simulator sends half a JSON event and ends the stream. The OpenAI SDK fails on the
    bad JSON; the Anthropic SDK skips an event without a name, so the gateway's error event is
    what tells it the message never finished."""
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, True, {"x-sim-garble-after": "5", **SHAPE})
    assert outcome.error is not None and outcome.text
    if fmt == "anthropic":
        stream_error_event(outcome)
    estimated_once(faulty.gateway, before, fmt, outcome)


@SQLITE_ONLY
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stream_without_its_closing_event_is_whole_and_billed_its_usage(
    faulty: Faulty, fmt: str
) -> None:
    """No `[DONE]` (OpenAI) or no `message_stop` (Anthropic): every token and the final usage
    came, so the answer is whole and measured; no error is added."""
    before = books(faulty.gateway)
    outcome = ask(faulty.gateway, fmt, True, {"x-sim-omit-last": "1", **SHAPE})
    assert b"[DONE]" not in outcome.raw and b"message_stop" not in outcome.raw
    assert b"event: error" not in outcome.raw
    assert outcome.usage is not None and outcome.usage.output_tokens == 40
    measured(faulty.gateway, before, fmt, outcome, stream=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stream_that_ends_before_its_usage_gets_an_error_event_and_an_estimate(
    faulty: Faulty, fmt: str
) -> None:
    """The stream ends cleanly but early: OpenAI without its finish chunk, usage and [DONE];
    Anthropic without message_delta and message_stop (only message_start's one output token
    was reported). The client is told, and the charge is the estimate, not the partial count."""
    before = books(faulty.gateway)
    omitted = {"openai": "3", "anthropic": "2"}[fmt]
    outcome = ask(faulty.gateway, fmt, True, {"x-sim-omit-last": omitted, **SHAPE})
    stream_error_event(outcome)
    assert outcome.text and outcome.usage is None
    estimated_once(faulty.gateway, before, fmt, outcome)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_estimate_never_exceeds_the_output_the_request_allowed(faulty: Faulty, fmt: str) -> None:
    """Many small events: their bytes / 4 is far more than the 30 tokens `max_tokens` allows.
    The estimate is capped there, so the charge stays within what was held."""
    before = books(faulty.gateway)
    many = {"x-sim-output-tokens": "30", "x-sim-chunks": "30", "x-fault": "reset-after-events=25"}
    outcome = ask(faulty.gateway, fmt, True, many, max_tokens=30)
    stream_error_event(outcome)
    relayed = outcome.raw[: gateway_tail_at(outcome.raw)]
    assert math.ceil(len(relayed) / BYTES_PER_OUTPUT_TOKEN) > 30
    cost = estimated_once(faulty.gateway, before, fmt, outcome, max_tokens=30)
    prompt = estimate_prompt_tokens(outcome.request_body)
    assert cost <= price_of(*provider_model(fmt), Usage(prompt, 30))  # the hold


# --- error storms ---------------------------------------------------------------------------

STORM = 6  # concurrent requests per format
STATUSES = (429, 500, 529)
ERROR_TYPES = {  # what each provider's own error body says (the simulator's, relayed as is)
    "openai": {429: "requests", 500: "server_error", 529: "server_error"},
    "anthropic": {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"},
}


@dataclass
class StormCall:
    fmt: str
    stream: bool
    status: int  # what the simulator answers its failing attempts
    key: str  # the simulator's fail key: its attempts are counted by it
    error: Exception | None = None
    usage: Usage | None = None


def storm(gateway: Gateway, gateway_id: str, failing_attempts: int) -> list[StormCall]:
    """`STORM` requests per format at once, one per (status, streamed) pair; the first
    `failing_attempts` attempts of each get its status from the simulator (each request has
    its own fail key)."""
    calls = [
        StormCall(fmt, index % 2 == 0, STATUSES[index % 3], f"storm-{uuid.uuid4().hex}")
        for fmt in FORMATS
        for index in range(STORM)
    ]

    def call_once(call: StormCall) -> None:
        sim = {
            "x-sim-fail-first": str(failing_attempts),
            "x-sim-fail-key": call.key,
            "x-sim-fail-status": str(call.status),
        }
        outcome = ask(gateway, call.fmt, call.stream, sim, gateway_id=gateway_id)
        call.error, call.usage = outcome.error, outcome.usage

    with ThreadPoolExecutor(len(calls)) as pool:
        list(pool.map(call_once, calls))
    return calls


def attempts_by_key(sim: Sim) -> dict[str, int]:
    counts: dict[str, int] = {}
    for recorded in sim.requests():
        headers = recorded["headers"]
        if isinstance(headers, dict) and "x-sim-fail-key" in headers:
            counts[headers["x-sim-fail-key"]] = counts.get(headers["x-sim-fail-key"], 0) + 1
    return counts


@pytest.mark.parametrize("retries", [False, True], ids=["no-retries", "gateway-retries"])
def test_a_storm_of_429_500_529_is_relayed_and_never_billed(
    faulty: Faulty, retrying: str, retries: bool
) -> None:
    """Every attempt of every request fails: each client gets the provider's own error (status
    and body), after 1 attempt, or 3 with the gateway's retries; nothing is charged and every
    hold is released."""
    gateway = faulty.gateway
    before = books(gateway)
    calls = storm(gateway, retrying if retries else "default", failing_attempts=99)
    for call in calls:
        error = call.error
        assert isinstance(error, (openai.APIStatusError, anthropic.APIStatusError)), repr(error)
        assert error.status_code == call.status
        if call.fmt == "anthropic" and call.status == 529:
            assert isinstance(error, anthropic.OverloadedError)
        body = error.body
        assert isinstance(body, dict)
        if call.fmt == "anthropic":
            assert body["type"] == "error"
            body = body["error"]
        assert body["type"] == ERROR_TYPES[call.fmt][call.status] and body["message"]
    counts = attempts_by_key(faulty.sim)
    assert [counts.get(call.key) for call in calls] == [3 if retries else 1] * len(calls)
    nothing_billed(gateway, before)


def test_a_transient_storm_is_retried_and_each_request_billed_once(
    faulty: Faulty, retrying: str
) -> None:
    """The first attempt of every request gets a 429, 500 or 529; the gateway's retries answer
    them all. One charge each, for the usage its client saw."""
    gateway = faulty.gateway
    before = books(gateway)
    calls = storm(gateway, retrying, failing_attempts=1)
    assert [call.error for call in calls] == [None] * len(calls)
    counts = attempts_by_key(faulty.sim)
    assert [counts.get(call.key) for call in calls] == [2] * len(calls)
    expected = sorted(
        price_of(*provider_model(call.fmt), call.usage) for call in calls if call.usage
    )
    after = books(gateway)
    new = after.since(before)
    assert len(expected) == len(calls) and [entry.kind for entry in new] == ["usage"] * len(calls)
    assert sorted(-entry.amount_nanos for entry in new) == expected
    assert not any(entry.note.endswith("(estimated)") for entry in new)
    assert after.balance_nanos == before.balance_nanos - sum(expected)
    assert after.open_holds == [] and after.held_nanos == 0


@SQLITE_ONLY
def test_a_stream_cut_short_is_not_cached(faulty: Faulty) -> None:
    """A stream that ended before the answer's end (here: before OpenAI's finish chunk) is not
    a whole answer: the response cache must not serve it to the next identical request."""
    gateway = faulty.gateway
    cloudflare.Cloudflare(
        api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
    ).ai_gateway.create(
        account_id=gateway.account.account_id,
        id="cached",
        **{**REQUIRED_GATEWAY_FIELDS, "cache_ttl": 300},
    )
    prompt = f"{PROMPT} ({uuid.uuid4().hex})"  # a key of its own
    cut = ask(gateway, "openai", True, {"x-sim-omit-last": "3"}, gateway_id="cached", prompt=prompt)
    stream_error_event(cut)
    whole = ask(gateway, "openai", True, {}, gateway_id="cached", prompt=prompt)
    assert whole.error is None and whole.usage is not None
    assert whole.headers["cf-aig-cache-status"] == "MISS"  # the cut one was not stored
