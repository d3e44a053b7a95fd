"""Unified Billing end to end for what providers bill beside plain tokens: Anthropic's 1-hour
cache writes, Perplexity's per-request search fee by search context size, and Deep Research's
citation tokens and searches. Official SDKs as clients, the simulator reporting each meter; the
expected cost is mapped from what the SDK parsed, independently of the gateway's adapters, and
the ledger entry, the cost header or stream comment and the credits remaining must all agree."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import (
    LONG_PROMPT,
    Recorder,
    anthropic_client,
    anthropic_usage,
    assert_billed,
    books,
    openai_client,
    openai_usage,
    price_of,
)
from tollgate.canonical import Usage

WRITES, WRITES_1H = 90, 60


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_one_hour_cache_writes_are_billed_at_their_price(
    gateway: Gateway, sim: Sim, stream: bool
) -> None:
    recorder = Recorder()
    client = anthropic_client(gateway, recorder)
    before = books(gateway)
    params: Any = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 512,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "extra_headers": {
            "x-sim-cache-write-tokens": str(WRITES),
            "x-sim-cache-write-1h-tokens": str(WRITES_1H),
            "x-sim-output-tokens": "40",
        },
    }
    if stream:
        with client.messages.stream(**params) as events:
            final = events.get_final_message()
    else:
        final = client.messages.create(**params)
    created = final.usage.cache_creation
    assert created is not None
    assert (created.ephemeral_1h_input_tokens, created.ephemeral_5m_input_tokens) == (
        WRITES_1H,
        WRITES - WRITES_1H,
    )
    usage = replace(
        anthropic_usage(final.usage), cache_write_1h_input_tokens=created.ephemeral_1h_input_tokens
    )
    cost = assert_billed(
        gateway, before, recorder.last, "anthropic", "claude-sonnet-4-6", usage, stream=stream
    )
    # The 1-hour writes cost more than if they had all been 5-minute writes.
    flat = price_of("anthropic", "claude-sonnet-4-6", replace(usage, cache_write_1h_input_tokens=0))
    assert cost > flat


def perplexity_usage(usage: Any, requested: str | None) -> Usage:
    """Perplexity's usage: OpenAI's counts plus citation tokens, searches and the search context
    (the response's, else the request's, else Perplexity's default "low")."""
    extra = usage.model_extra or {}
    return replace(
        openai_usage(usage),
        citation_tokens=int(extra.get("citation_tokens") or 0),
        search_queries=int(extra.get("num_search_queries") or 0),
        search_context=extra.get("search_context_size") or requested or "low",
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("context", [None, "medium", "high"], ids=["default", "medium", "high"])
def test_perplexity_search_fee_follows_the_search_context(
    gateway: Gateway, sim: Sim, stream: bool, context: str | None
) -> None:
    recorder = Recorder()
    client = openai_client(gateway, recorder, base="perplexity-ai")
    before = books(gateway)
    extra_body = {"web_search_options": {"search_context_size": context}} if context else None
    messages: Any = [{"role": "user", "content": "What happened in markets today?"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="sonar",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
            )
        )
        [reported] = [chunk.usage for chunk in chunks if chunk.usage is not None]
    else:
        reply = client.chat.completions.create(
            model="sonar", messages=messages, extra_body=extra_body
        )
        assert reply.usage is not None
        reported = reply.usage
    usage = perplexity_usage(reported, context)
    assert usage.search_context == (context or "low")
    cost = assert_billed(
        gateway, before, recorder.last, "perplexity-ai", "sonar", usage, stream=stream
    )
    fee = {"low": 5_000_000, "medium": 8_000_000, "high": 12_000_000}[usage.search_context]
    tokens_only = price_of("perplexity-ai", "sonar", Usage(usage.input_tokens, usage.output_tokens))
    assert cost == tokens_only + fee  # $5 / $8 / $12 per 1,000 requests
    entry = books(gateway).entries[-1]
    assert f"search context {usage.search_context}" in entry.note


@pytest.mark.parametrize(
    ("stream", "search_type", "fee"),
    [
        (True, "pro", 18_000_000),  # Pro Search: $18 per 1,000 at medium
        (True, "auto", 18_000_000),  # the model may pick Pro Search: billed as it (never under)
        (True, "fast", 10_000_000),  # standard Sonar Pro: $10 per 1,000 at medium
        (False, "pro", 10_000_000),  # Pro Search runs only when streamed; otherwise standard
    ],
)
def test_sonar_pro_search_pays_its_own_fee(
    gateway: Gateway, sim: Sim, stream: bool, search_type: str, fee: int
) -> None:
    recorder = Recorder()
    client = openai_client(gateway, recorder, base="perplexity-ai")
    before = books(gateway)
    options = {"search_context_size": "medium", "search_type": search_type}
    messages: Any = [{"role": "user", "content": "Compare this year's battery chemistries."}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="sonar-pro",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"web_search_options": options},
            )
        )
        [reported] = [chunk.usage for chunk in chunks if chunk.usage is not None]
    else:
        reply = client.chat.completions.create(
            model="sonar-pro", messages=messages, extra_body={"web_search_options": options}
        )
        assert reply.usage is not None
        reported = reply.usage
    usage = replace(perplexity_usage(reported, "medium"), pro_search=fee == 18_000_000)
    cost = assert_billed(
        gateway, before, recorder.last, "perplexity-ai", "sonar-pro", usage, stream=stream
    )
    tokens = price_of("perplexity-ai", "sonar-pro", Usage(usage.input_tokens, usage.output_tokens))
    assert cost == tokens + fee


def test_perplexity_deep_research_bills_citations_and_searches(gateway: Gateway, sim: Sim) -> None:
    recorder = Recorder()
    client = openai_client(gateway, recorder, base="perplexity-ai")
    before = books(gateway)
    reply = client.chat.completions.create(
        model="sonar-deep-research",
        messages=[{"role": "user", "content": "Survey the literature on grid storage."}],
        extra_headers={"x-sim-citation-tokens": "700", "x-sim-search-queries": "9"},
    )
    assert reply.usage is not None
    usage = perplexity_usage(reply.usage, None)
    assert (usage.citation_tokens, usage.search_queries) == (700, 9)
    cost = assert_billed(
        gateway, before, recorder.last, "perplexity-ai", "sonar-deep-research", usage, stream=False
    )
    plain = price_of(
        "perplexity-ai",
        "sonar-deep-research",
        Usage(usage.input_tokens, usage.output_tokens, reasoning_tokens=usage.reasoning_tokens),
    )
    assert cost == plain + 700 * 2000 + 9 * 5_000_000  # $2 per M citations, $5 per 1K searches
    assert "700 citation, 9 searches" in books(gateway).entries[-1].note
