"""Unified Billing end to end, cost side: what each official SDK saw is what the ledger charged.

For every provider family (OpenAI, Anthropic and Gemini natively; OpenAI-format clients through
`/compat` to Anthropic and Gemini), streamed and not, the usage the SDK parsed from the response
is mapped to canonical `Usage` the provider's documented way, independently of the gateway's own
adapters, and priced with the catalog. The ledger's single new `usage` entry, the `cf-aig-cost`
header (or the stream's `: cf-aig-cost=` comment) and `cf-aig-credits-remaining` must agree with
it to the nano-dollar. The simulator is told to report cache reads, cache writes and reasoning,
so every price of the formula is exercised.

The helpers at the top are shared by the other `test_billing_*` files.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway, Sim
from tollgate import money
from tollgate.billing.catalog import load_catalog
from tollgate.billing.ledger import check_invariants
from tollgate.canonical import Usage
from tollgate.sim import text as simtext
from tollgate.store import Store
from tollgate.store import ledger as ledger_repo
from tollgate.store.holds import Hold
from tollgate.store.models import LedgerEntry

CATALOG = load_catalog()
T = TypeVar("T")

# A prompt long enough (~330 sim tokens) to hold the cached and cache-write tokens asked for.
LONG_PROMPT = "Summarise the quarterly figures for the board. " * 28
CACHED, CACHE_WRITE, REASONING, OUTPUT = 120, 60, 40, 50
SIM_HEADERS = {
    "x-sim-cached-tokens": str(CACHED),
    "x-sim-cache-write-tokens": str(CACHE_WRITE),
    "x-sim-reasoning-tokens": str(REASONING),
    "x-sim-output-tokens": str(OUTPUT),
}
# The same controls for requests whose headers do not reach the simulator (translated ones).
SIM_DIRECTIVE = (
    f"[sim cached-tokens={CACHED} cache-write-tokens={CACHE_WRITE} "
    f"reasoning-tokens={REASONING} output-tokens={OUTPUT}]"
)
_COMMENT = re.compile(rb"^: cf-aig-cost=(\S+) cf-aig-credits-remaining=(\S+)( estimated)?$", re.M)


# --- shared helpers ---------------------------------------------------------------------------


def run_store(database_url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        store = Store(database_url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


@dataclass
class Books:
    """One account's money, read in one snapshot after `check_invariants` passed on it."""

    balance_nanos: int
    held_nanos: int
    entries: list[LedgerEntry]  # oldest first
    holds: tuple[Hold, ...]

    @property
    def open_holds(self) -> list[Hold]:
        return [hold for hold in self.holds if hold.state == "open"]

    def since(self, before: Books) -> list[LedgerEntry]:
        """The entries appended after `before` was read."""
        return self.entries[len(before.entries) :]


def books(gateway: Gateway, account_id: str | None = None) -> Books:
    account = account_id or gateway.account.account_id
    gateway.sync_books()

    async def read(store: Store) -> Books:
        snapshot = await check_invariants(store, account)  # raises on any ledger/hold mismatch
        entries = await ledger_repo.list_entries(store, account, limit=10_000)
        return Books(snapshot.balance_nanos, snapshot.held_nanos, entries[::-1], snapshot.holds)

    return run_store(gateway.database_url, read)


def grant_nanos(gateway: Gateway, account_id: str, nanos: int) -> None:
    """Credit an exact amount of nano-dollars (the API only takes cents)."""

    async def grant(store: Store) -> None:
        await ledger_repo.append_entry(
            store, account_id, kind="grant", amount_nanos=nanos, note="exact test credits"
        )

    run_store(gateway.database_url, grant)


def price_of(provider: str, model: str, usage: Usage) -> int:
    price = CATALOG.lookup(provider, model)
    assert price is not None, f"{provider}/{model} is not priced"
    return CATALOG.cost(provider, price, usage)


def one_usage_entry(after: Books, before: Books) -> LedgerEntry:
    new = after.since(before)
    assert [entry.kind for entry in new] == ["usage"], new
    return new[0]


def cost_comment(raw: bytes) -> tuple[int, int, bool]:
    """(cost, credits remaining, estimated) from the stream's `: cf-aig-cost=` comment."""
    found = _COMMENT.findall(raw)
    assert len(found) == 1, f"expected one cost comment in the stream, got {found}"
    cost, remaining, estimated = found[0]
    return (
        money.from_dollars(cost.decode()),
        money.from_dollars(remaining.decode()),
        bool(estimated),
    )


def header_nanos(headers: Mapping[str, str], name: str) -> int:
    value = headers.get(name)
    assert value is not None, f"missing {name} header"
    return money.from_dollars(value)


@dataclass
class Exchange:
    request_body: bytes
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Recorder(httpx2.HTTPTransport):
    """A transport that reads every response whole before the SDK sees it, and keeps it.

    Reading to the end means the gateway has settled the request (a stream's cost comment is
    sent after the settle), and the raw bytes show what the SDK was given. The official SDKs
    here take `httpx2` clients.
    """

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sent = request.read()
        response = super().handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.exchanges.append(Exchange(sent, response.status_code, headers, body))
        kept = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        ]
        return httpx2.Response(response.status_code, headers=kept, content=body, request=request)

    @property
    def last(self) -> Exchange:
        assert self.exchanges, "no request was made"
        return self.exchanges[-1]

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self, timeout=30)


def openai_client(
    gateway: Gateway,
    recorder: Recorder,
    base: str = "openai",
    *,
    account_id: str | None = None,
    token: str | None = None,
    **kwargs: Any,
) -> openai.OpenAI:
    """The official client through the gateway, its requests recorded; the gateway's seeded
    account unless `account_id` and `token` name another."""
    return openai.OpenAI(
        api_key=token or gateway.account.token,
        base_url=gateway.base(base, account_id),
        max_retries=0,
        http_client=recorder.client(),
        **kwargs,
    )


def anthropic_client(gateway: Gateway, recorder: Recorder, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=gateway.account.token,
        base_url=gateway.base("anthropic"),
        max_retries=0,
        http_client=recorder.client(),
        **kwargs,
    )


def genai_client(
    gateway: Gateway, recorder: Recorder, headers: dict[str, str] | None = None
) -> genai.Client:
    return genai.Client(
        api_key=gateway.account.token,
        http_options=genai_types.HttpOptions(
            base_url=gateway.base("google-ai-studio"),
            api_version="v1beta",
            headers=headers,
            httpx_client=recorder.client(),
        ),
    )


# --- each provider's documented usage semantics, mapped here without the gateway's code ------


def openai_usage(usage: Any) -> Usage:
    """Chat Completions: cached and cache-write tokens INSIDE prompt_tokens, reasoning INSIDE
    completion_tokens."""
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_input_tokens=_count(prompt, "cached_tokens"),
        cache_write_input_tokens=_count(prompt, "cache_write_tokens"),
        reasoning_tokens=_count(completion, "reasoning_tokens"),
    )


def _count(details: Any, name: str) -> int:
    if details is None:
        return 0
    value = getattr(details, name, None)
    if value is None:
        value = (details.model_extra or {}).get(name)
    return int(value or 0)


def anthropic_usage(usage: Any) -> Usage:
    """Messages: cache reads and writes BESIDE input_tokens; thinking inside output_tokens."""
    read = usage.cache_read_input_tokens or 0
    write = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=usage.input_tokens + read + write,
        output_tokens=usage.output_tokens,
        cached_input_tokens=read,
        cache_write_input_tokens=write,
    )


def gemini_usage(meta: Any) -> Usage:
    """usageMetadata: cached INSIDE promptTokenCount, thoughts BESIDE candidatesTokenCount."""
    thoughts = meta.thoughts_token_count or 0
    return Usage(
        input_tokens=meta.prompt_token_count,
        output_tokens=(meta.candidates_token_count or 0) + thoughts,
        cached_input_tokens=meta.cached_content_token_count or 0,
        reasoning_tokens=thoughts,
    )


def assert_billed(
    gateway: Gateway,
    before: Books,
    exchange: Exchange,
    provider: str,
    model: str,
    usage: Usage,
    *,
    stream: bool,
) -> int:
    """The ledger, the cost header or comment and the credits remaining all match `usage`."""
    expected = price_of(provider, model, usage)
    assert expected > 0
    after = books(gateway)
    entry = one_usage_entry(after, before)
    assert entry.amount_nanos == -expected, (entry, usage)
    assert after.balance_nanos == before.balance_nanos - expected
    assert after.open_holds == [] and after.held_nanos == 0
    if stream:
        cost, remaining, estimated = cost_comment(exchange.body)
        assert (cost, remaining, estimated) == (expected, after.balance_nanos, False)
    else:
        assert header_nanos(exchange.headers, "cf-aig-cost") == expected
        assert header_nanos(exchange.headers, "cf-aig-credits-remaining") == after.balance_nanos
    return expected


# --- exact cost, per provider family ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_native_cost_is_exact(gateway: Gateway, sim: Sim, stream: bool) -> None:
    """gpt-5.1 (a reasoning model): cached input and reasoning inside the OpenAI counts."""
    recorder = Recorder()
    client = openai_client(gateway, recorder)
    before = books(gateway)
    messages: Any = [{"role": "user", "content": LONG_PROMPT}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gpt-5.1",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=SIM_HEADERS,
            )
        )
        seen = [chunk.usage for chunk in chunks if chunk.usage is not None]
        assert len(seen) == 1
        usage = openai_usage(seen[0])
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5.1", messages=messages, extra_headers=SIM_HEADERS
        )
        reply = raw.parse()
        assert reply.usage is not None
        usage = openai_usage(reply.usage)
        assert header_nanos(raw.headers, "cf-aig-cost") == price_of("openai", "gpt-5.1", usage)
    assert (usage.cached_input_tokens, usage.reasoning_tokens) == (CACHED, REASONING)
    assert usage.output_tokens == OUTPUT + REASONING
    assert_billed(gateway, before, recorder.last, "openai", "gpt-5.1", usage, stream=stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_native_cost_is_exact(gateway: Gateway, sim: Sim, stream: bool) -> None:
    """claude-sonnet-4-6 with thinking: cache reads and writes beside input, each its price."""
    recorder = Recorder()
    client = anthropic_client(gateway, recorder)
    before = books(gateway)
    params: Any = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "extra_headers": SIM_HEADERS,
    }
    if stream:
        with client.messages.stream(**params) as events:
            final = events.get_final_message()
        usage = anthropic_usage(final.usage)
    else:
        raw = client.messages.with_raw_response.create(**params)
        usage = anthropic_usage(raw.parse().usage)
        cost = header_nanos(raw.headers, "cf-aig-cost")
        assert cost == price_of("anthropic", "claude-sonnet-4-6", usage)
    assert (usage.cached_input_tokens, usage.cache_write_input_tokens) == (CACHED, CACHE_WRITE)
    assert usage.output_tokens == OUTPUT + REASONING  # thinking is inside output_tokens
    assert_billed(
        gateway, before, recorder.last, "anthropic", "claude-sonnet-4-6", usage, stream=stream
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_gemini_native_cost_is_exact(gateway: Gateway, sim: Sim, stream: bool) -> None:
    """gemini-2.5-pro: cached inside the prompt count, thoughts beside the candidates."""
    recorder = Recorder()
    client = genai_client(gateway, recorder, headers=SIM_HEADERS)
    before = books(gateway)
    if stream:
        chunks = list(
            client.models.generate_content_stream(model="gemini-2.5-pro", contents=LONG_PROMPT)
        )
        metas = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
        usage = gemini_usage(metas[-1])  # cumulative: the last chunk's is the total
    else:
        reply = client.models.generate_content(model="gemini-2.5-pro", contents=LONG_PROMPT)
        assert reply.usage_metadata is not None
        usage = gemini_usage(reply.usage_metadata)
    assert (usage.cached_input_tokens, usage.reasoning_tokens) == (CACHED, REASONING)
    exchange = recorder.last
    expected = price_of("google-ai-studio", "gemini-2.5-pro", usage)
    if stream:
        # google-genai rejects SSE comments, so a Gemini stream carries no cost comment.
        assert b"cf-aig-cost" not in exchange.body
        after = books(gateway)
        assert one_usage_entry(after, before).amount_nanos == -expected
        assert after.balance_nanos == before.balance_nanos - expected and not after.open_holds
    else:
        assert_billed(
            gateway, before, exchange, "google-ai-studio", "gemini-2.5-pro", usage, stream=False
        )


@pytest.mark.parametrize(
    ("provider", "model", "extra"),
    [
        ("anthropic", "claude-sonnet-4-6", {"reasoning_effort": "low", "max_tokens": 4000}),
        ("google-ai-studio", "gemini-2.5-pro", {}),
    ],
    ids=["to-anthropic", "to-google"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_compat_translated_cost_is_exact(
    gateway: Gateway, sim: Sim, provider: str, model: str, extra: dict[str, Any], stream: bool
) -> None:
    """An OpenAI client through /compat: the rendered OpenAI usage prices like the provider's."""
    recorder = Recorder()
    client = openai_client(gateway, recorder, base="compat")
    before = books(gateway)
    messages: Any = [{"role": "user", "content": f"{LONG_PROMPT} {SIM_DIRECTIVE}"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=f"{provider}/{model}",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
        )
        seen = [chunk.usage for chunk in chunks if chunk.usage is not None]
        assert len(seen) == 1
        usage = openai_usage(seen[0])
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=f"{provider}/{model}", messages=messages, **extra
        )
        reply = raw.parse()
        assert reply.usage is not None
        usage = openai_usage(reply.usage)
    assert usage.cached_input_tokens == CACHED
    if provider == "anthropic":
        assert usage.cache_write_input_tokens == CACHE_WRITE
        assert usage.output_tokens == OUTPUT + REASONING  # thinking, inside the completion
    else:
        assert usage.reasoning_tokens == REASONING
    assert_billed(gateway, before, recorder.last, provider, model, usage, stream=stream)


def test_openai_responses_api_cost_is_exact_including_cache_writes(
    gateway: Gateway, sim: Sim
) -> None:
    """The Responses API reports cache writes in `input_tokens_details.cache_write_tokens`
    (inside `input_tokens`); gpt-6.1-sol prices them above plain input."""
    recorder = Recorder()
    client = openai_client(gateway, recorder)
    before = books(gateway)
    raw = client.responses.with_raw_response.create(
        model="gpt-6.1-sol", input=LONG_PROMPT, extra_headers=SIM_HEADERS
    )
    reply = raw.parse()
    assert reply.usage is not None
    details = reply.usage.input_tokens_details
    usage = Usage(
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
        cached_input_tokens=_count(details, "cached_tokens"),
        cache_write_input_tokens=_count(details, "cache_write_tokens"),
        reasoning_tokens=_count(reply.usage.output_tokens_details, "reasoning_tokens"),
    )
    assert (usage.cached_input_tokens, usage.cache_write_input_tokens) == (CACHED, CACHE_WRITE)
    assert_billed(gateway, before, recorder.last, "openai", "gpt-6.1-sol", usage, stream=False)


# --- the usage chunk a client did not ask for ------------------------------------------------


def test_unasked_usage_chunk_is_stripped_yet_billed_exactly(gateway: Gateway, sim: Sim) -> None:
    prompt = "Tell me about the harbour at dawn"
    messages: Any = [{"role": "user", "content": prompt}]
    headers = {"x-sim-output-tokens": "30", "x-sim-reasoning-tokens": "12"}
    # By the simulator's rules (tollgate.sim.text): one message, 30 visible + 12 reasoning.
    by_hand = Usage(
        input_tokens=simtext.prompt_tokens([prompt]),
        output_tokens=30 + 12,
        reasoning_tokens=12,
    )
    recorder = Recorder()
    client = openai_client(gateway, recorder)

    before = books(gateway)
    chunks = list(
        client.chat.completions.create(
            model="gpt-5-mini", messages=messages, stream=True, extra_headers=headers
        )
    )
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no `choices: []` usage chunk got through
    assert b'"choices":[]' not in recorder.last.body.replace(b" ", b"")
    upstream = sim.requests()[-1]["body"]
    assert '"include_usage":true' in str(upstream).replace(" ", "")  # the gateway asked for it
    assert_billed(gateway, before, recorder.last, "openai", "gpt-5-mini", by_hand, stream=True)

    before = books(gateway)
    asked = list(
        client.chat.completions.create(
            model="gpt-5-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
    )
    seen = [chunk.usage for chunk in asked if chunk.usage is not None]
    assert len(seen) == 1 and asked[-1].choices == []  # asked for: the client gets it
    assert openai_usage(seen[0]) == by_hand
    assert_billed(gateway, before, recorder.last, "openai", "gpt-5-mini", by_hand, stream=True)
