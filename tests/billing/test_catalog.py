"""The price catalog: packaged data, lookup, exact cost per provider semantics, overrides."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.billing.catalog import (
    Catalog,
    CatalogError,
    ModelPrice,
    load_catalog,
    parse_catalog,
)
from tollgate.canonical import Usage
from tollgate.providers import anthropic, google, openai
from tollgate.providers.registry import PROVIDERS

CATALOG = load_catalog()


def price(provider: str, model: str, catalog: Catalog = CATALOG) -> ModelPrice:
    found = catalog.lookup(provider, model)
    assert found is not None, f"{provider}/{model} is not priced"
    return found


def raw_data() -> dict[str, Any]:
    text = resources.files("tollgate.billing").joinpath("data/catalog.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


# --- the packaged file ---------------------------------------------------------------------


def test_packaged_catalog_loads_and_is_versioned() -> None:
    assert CATALOG.version == "2026-11-29"
    assert CATALOG.markup_percent == 0
    assert len(CATALOG.models()) == len(raw_data()["models"])


def test_prices_in_the_file_are_decimal_strings_never_floats() -> None:
    for row in raw_data()["models"]:
        for key, value in row.items():
            assert not isinstance(value, float), (row["id"], key)


def test_every_registry_provider_with_public_prices_has_models() -> None:
    # No public list prices: openrouter is a pass-through marketplace (optional in the brief),
    # workers-ai and custom-* are the operator's own servers (priced by overrides).
    expected = {slug for slug in PROVIDERS if not slug.startswith("custom-")}
    expected -= {"openrouter", "workers-ai"}
    priced = {model.provider for model in CATALOG.models()}
    assert expected <= priced, expected - priced


def test_every_model_is_well_formed() -> None:
    for model in CATALOG.models():
        assert model.id == f"{model.provider}/{model.model}"
        assert model.context_window > 0
        assert model.max_output_tokens > 0 or model.embedding
        assert model.prices.input >= 0 and model.prices.output >= 0


# Spot checks against the sources in billing/data/SOURCES.md (USD per million tokens).
SPOT_CHECKS = [
    # platform.claude.com models/opus-5 overview: $5 / $25, writes $6.25 / $10, read $0.50
    ("anthropic", "claude-opus-5", "5", "25", "0.5", "6.25"),
    # claudit v1.9.2 / PromptFuel v1.0.23: Haiku 5.5 <=100K band $0.10 / $0.50, read $0.01
    ("anthropic", "claude-haiku-5-5", "0.1", "0.5", "0.01", "0.125"),
    # developers.openai.com models/gpt-6.1-terra: $1 / $5, cached $0.05, writes $1.25
    ("openai", "gpt-6.1-terra", "1", "5", "0.05", "1.25"),
    # developers.openai.com models/gpt-5-nano: $0.05 / $0.40, cached $0.005
    ("openai", "gpt-5-nano", "0.05", "0.4", "0.005", None),
    # ai.google.dev pricing (api-evangelist transcription 2026-10-07): Gemini 3.1 Pro $2 / $12
    ("google-ai-studio", "gemini-3.1-pro-preview", "2", "12", None, None),
    # api-docs.deepseek.com pricing: deepseek-flash peak $0.30 miss / $0.006 hit / $1.20 out
    ("deepseek", "deepseek-flash", "0.3", "1.2", "0.006", None),
    # docs.x.ai grok-4-6: $2 / $6; cached $0.50 (Grok 4.7 guide)
    ("grok", "grok-4.6", "2", "6", "0.5", None),
    # docs.perplexity.ai pricing: Sonar Pro $3 / $15
    ("perplexity-ai", "sonar-pro", "3", "15", None, None),
]


@pytest.mark.parametrize(("provider", "model", "inp", "out", "cached", "write"), SPOT_CHECKS)
def test_spot_check_list_prices(
    provider: str, model: str, inp: str, out: str, cached: str | None, write: str | None
) -> None:
    pricing = price(provider, model).to_public()["pricing"]
    assert pricing["currency"] == "USD"
    assert Decimal(str(pricing["input"])) == Decimal(inp)
    assert Decimal(str(pricing["output"])) == Decimal(out)
    expect_cached = None if cached is None else Decimal(cached)
    got_cached = None if pricing["cached_input"] is None else Decimal(str(pricing["cached_input"]))
    assert got_cached == expect_cached
    expect_write = None if write is None else Decimal(write)
    got_write = None if pricing["cache_write"] is None else Decimal(str(pricing["cache_write"]))
    assert got_write == expect_write


def test_to_public_shape() -> None:
    public = price("openai", "gpt-4o-mini").to_public()
    assert public == {
        "id": "openai/gpt-4o-mini",
        "provider": "openai",
        "context_window": 128000,
        "max_output_tokens": 16384,
        "pricing": {
            "currency": "USD",
            "input": 0.15,
            "output": 0.6,
            "cached_input": 0.075,
            "cache_write": None,
            "cache_write_1h": None,
            "reasoning": None,
        },
    }
    json.dumps(public)  # plain JSON


# --- lookup --------------------------------------------------------------------------------


def test_lookup_aliases_and_snapshots() -> None:
    assert price("anthropic", "claude-sonnet-4-5-20250929").id == "anthropic/claude-sonnet-4-5"
    assert price("openai", "gpt-5.6").id == "openai/gpt-5.6-sol"
    # a dated snapshot that is not listed resolves to its base model
    assert price("openai", "gpt-4o-2024-05-13").id == "openai/gpt-4o"
    assert price("anthropic", "claude-opus-4-8-20260528").id == "anthropic/claude-opus-4-8"
    assert price("mistral", "mistral-medium-latest").id == "mistral/mistral-medium-3-5"
    # provider aliases and Gemini's models/ prefix
    assert price("google", "models/gemini-2.5-pro").id == "google-ai-studio/gemini-2.5-pro"
    assert price("xai", "grok-4.7").id == "grok/grok-4.7"
    # model names containing a slash (Groq)
    assert price("groq", "openai/gpt-oss-120b").id == "groq/openai/gpt-oss-120b"


def test_listed_snapshot_wins_over_its_base() -> None:
    data = raw_data()
    data["models"].append(
        {
            "id": "openai/gpt-4o-2024-05-13",
            "context_window": 128000,
            "max_output_tokens": 4096,
            "input": "5.00",
            "output": "15.00",
        }
    )
    catalog = parse_catalog(data)
    assert price("openai", "gpt-4o-2024-05-13", catalog).id == "openai/gpt-4o-2024-05-13"


def test_lookup_unknown_is_none() -> None:
    assert CATALOG.lookup("openai", "gpt-99") is None
    assert CATALOG.lookup("anthropic", "gpt-4o") is None
    assert CATALOG.lookup("nope", "gpt-4o") is None


def test_models_listing_filters() -> None:
    anthropic_models = CATALOG.models(provider="anthropic")
    assert anthropic_models and all(m.provider == "anthropic" for m in anthropic_models)
    assert [m.id for m in CATALOG.models(search="HAIKU-4-5")] == ["anthropic/claude-haiku-4-5"]
    # search matches aliases too
    assert [m.id for m in CATALOG.models(search="20250929")] == ["anthropic/claude-sonnet-4-5"]
    assert [m.id for m in CATALOG.models(provider="google")] == [
        m.id for m in CATALOG.models(provider="google-ai-studio")
    ]


# --- cost: each provider's semantics, by hand ----------------------------------------------


def test_openai_cached_tokens_are_inside_prompt_tokens() -> None:
    # gpt-4o: $2.50 in, $1.25 cached, $10 out => 2500 / 1250 / 10000 nanos per token.
    usage = openai.usage_from_response(
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 500,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 200},
                "completion_tokens_details": {"reasoning_tokens": 300},
            }
        }
    )
    # 800 x 2500 + 200 x 1250 + 500 x 10000 (reasoning is inside completion)
    assert CATALOG.cost("openai", price("openai", "gpt-4o"), usage) == 7_250_000


def test_anthropic_cache_reads_and_writes_beside_input() -> None:
    # claude-sonnet-4-6: $3 in, $3.75 5m write, $0.30 read, $15 out.
    usage = anthropic.usage_from_response(
        {
            "usage": {
                "input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 2000,
                "output_tokens": 50,
            }
        }
    )
    # 100 x 3000 + 1000 x 300 + 2000 x 3750 + 50 x 15000
    expected = 300_000 + 300_000 + 7_500_000 + 750_000
    assert CATALOG.cost("anthropic", price("anthropic", "claude-sonnet-4-6"), usage) == expected


def test_anthropic_one_hour_cache_writes_bill_at_their_own_price() -> None:
    # claude-sonnet-4-6: $3 in, $3.75 5-minute write, $6 1-hour write, $0.30 read, $15 out.
    usage = anthropic.usage_from_response(
        {
            "usage": {
                "input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 2000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 500,
                    "ephemeral_1h_input_tokens": 1500,
                },
                "output_tokens": 50,
            }
        }
    )
    assert (usage.cache_write_input_tokens, usage.cache_write_1h_input_tokens) == (2000, 1500)
    sonnet = price("anthropic", "claude-sonnet-4-6")
    assert sonnet.prices.cache_write_1h == 6000
    # 100 x 3000 + 1000 x 300 + 500 x 3750 + 1500 x 6000 + 50 x 15000
    expected = 300_000 + 300_000 + 1_875_000 + 9_000_000 + 750_000
    assert CATALOG.cost("anthropic", sonnet, usage) == expected


def test_a_one_hour_write_without_its_own_price_bills_at_the_write_price() -> None:
    catalog = load_catalog(overrides={"anthropic/claude-sonnet-4-6": {"cache_write_1h": None}})
    sonnet = price("anthropic", "claude-sonnet-4-6", catalog)
    usage = Usage(3000, 0, cache_write_input_tokens=3000, cache_write_1h_input_tokens=1000)
    assert catalog.cost("anthropic", sonnet, usage) == 3000 * 3750  # never below a 5m write
    with pytest.raises(ValueError, match="inconsistent"):
        catalog.cost("anthropic", sonnet, Usage(10, 0, 5, 1, cache_write_1h_input_tokens=2))


@pytest.mark.parametrize(
    ("model", "context", "fee"),
    [
        ("sonar", "low", 5_000_000),  # $5 per 1,000 requests = $0.005 = 5,000,000 nanos
        ("sonar", "medium", 8_000_000),
        ("sonar", "high", 12_000_000),
        ("sonar-pro", "low", 6_000_000),
        ("sonar-pro", "high", 14_000_000),
        ("sonar-reasoning-pro", "medium", 10_000_000),
        ("sonar", "enormous", 12_000_000),  # a size the table does not list: its highest fee
        ("sonar", None, 0),  # no context reported nor requested: the meter supplies "low"
    ],
)
def test_perplexity_request_fee_by_search_context(
    model: str, context: str | None, fee: int
) -> None:
    usage = openai.usage_from_response(
        {"usage": {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}}
    )
    usage = replace(usage, search_context=context)
    sonar = price("perplexity-ai", model)
    tokens = CATALOG.cost("perplexity-ai", sonar, replace(usage, search_context=None))
    assert CATALOG.cost("perplexity-ai", sonar, usage) == tokens + fee


def test_sonar_pro_search_has_its_own_fee_table() -> None:
    pro = price("perplexity-ai", "sonar-pro")
    assert pro.has_pro_search and not price("perplexity-ai", "sonar").has_pro_search
    standard = Usage(0, 0, search_context="medium")
    assert CATALOG.cost("perplexity-ai", pro, standard) == 10_000_000  # $10 per 1,000
    assert CATALOG.cost("perplexity-ai", pro, replace(standard, pro_search=True)) == 18_000_000
    sonar = price("perplexity-ai", "sonar")  # no Pro Search table: the standard fee
    assert CATALOG.cost("perplexity-ai", sonar, replace(standard, pro_search=True)) == 8_000_000
    shown = pro.to_public()["pricing"]["pro_search_request_fee_per_1k"]
    assert shown == {"low": 14.0, "medium": 18.0, "high": 22.0}


def test_perplexity_deep_research_bills_citations_and_searches() -> None:
    usage = openai.usage_from_response(
        {
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 5000,
                "total_tokens": 6000,
                "citation_tokens": 3000,
                "num_search_queries": 12,
                "reasoning_tokens": 0,
                "completion_tokens_details": {"reasoning_tokens": 2000},
                "search_context_size": "high",
            }
        }
    )
    assert (usage.citation_tokens, usage.search_queries, usage.search_context) == (
        3000,
        12,
        "high",
    )
    research = price("perplexity-ai", "sonar-deep-research")
    # 1000 x $2/M + 3000 x $8/M + 2000 x $3/M (reasoning) + 3000 x $2/M (citations)
    # + 12 x $5/1K (searches); no per-request fee on this model.
    expected = 1000 * 2000 + 3000 * 8000 + 2000 * 3000 + 3000 * 2000 + 12 * 5_000_000
    assert CATALOG.cost("perplexity-ai", research, usage) == expected


def test_meters_a_model_has_no_price_for_are_not_billed() -> None:
    # gpt-4o reports no citations or searches; if a provider did, they would not be charged.
    usage = Usage(100, 10, citation_tokens=500, search_queries=3, search_context="high")
    plain = Usage(100, 10)
    gpt = price("openai", "gpt-4o")
    assert CATALOG.cost("openai", gpt, usage) == CATALOG.cost("openai", gpt, plain)


def test_fees_are_marked_up_exactly_and_shown_in_usd_per_thousand() -> None:
    marked = load_catalog(markup_percent="10")
    sonar = price("perplexity-ai", "sonar", marked)
    usage = Usage(0, 0, search_context="medium")
    assert marked.cost("perplexity-ai", sonar, usage) == 8_800_000  # $8.80 per 1,000
    shown = price("perplexity-ai", "sonar").to_public()["pricing"]
    assert shown["request_fee_per_1k"] == {"low": 5.0, "medium": 8.0, "high": 12.0}
    research = price("perplexity-ai", "sonar-deep-research").to_public()["pricing"]
    assert (research["citation"], research["search_queries_per_1k"]) == (2.0, 5.0)
    assert "request_fee_per_1k" not in price("openai", "gpt-4o").to_public()["pricing"]


def test_an_override_can_remove_or_change_a_fee() -> None:
    catalog = load_catalog(
        overrides={
            "perplexity-ai/sonar": {"request_fee_per_1k": None},
            "perplexity-ai/sonar-pro": {"request_fee_per_1k": {"low": "1.00"}},
        }
    )
    assert not price("perplexity-ai", "sonar", catalog).has_request_fee
    pro = price("perplexity-ai", "sonar-pro", catalog)
    assert catalog.cost("perplexity-ai", pro, Usage(0, 0, search_context="low")) == 1_000_000


def test_gemini_thoughts_billed_as_output() -> None:
    # gemini-2.5-flash: $0.30 in, $2.50 out => 300 / 2500 nanos per token.
    usage = google.usage_from_response(
        {
            "usageMetadata": {
                "promptTokenCount": 1000,
                "candidatesTokenCount": 100,
                "thoughtsTokenCount": 400,
            }
        }
    )
    assert usage.output_tokens == 500
    expected = 1000 * 300 + 500 * 2500
    assert CATALOG.cost("google", price("google", "gemini-2.5-flash"), usage) == expected


def test_xai_reasoning_beside_completion() -> None:
    # grok-4.7: $2 in, $0.50 cached, $6 out; xAI reports reasoning beside completion.
    usage = openai.usage_from_response(
        {
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "total_tokens": 140,
                "completion_tokens_details": {"reasoning_tokens": 30},
            }
        }
    )
    assert usage.output_tokens == 40
    assert CATALOG.cost("grok", price("grok", "grok-4.7"), usage) == 100 * 2000 + 40 * 6000


def test_fractional_nanos_round_once_half_up() -> None:
    # groq gpt-oss-20b: $0.0375 cached => 37.5 nanos per token; 1 cached token = 37.5 -> 38.
    model = price("groq", "openai/gpt-oss-20b")
    usage = Usage(input_tokens=1, cached_input_tokens=1)
    assert CATALOG.cost("groq", model, usage) == 38
    # 3 cached tokens = 112.5 -> 113; rounding happens once on the sum, not per token
    assert CATALOG.cost("groq", model, Usage(input_tokens=3, cached_input_tokens=3)) == 113


def test_separate_reasoning_price() -> None:
    # sonar-deep-research: $2 in, $8 out, reasoning tokens $3.
    usage = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=60)
    expected = 10 * 2000 + 40 * 8000 + 60 * 3000
    model = price("perplexity-ai", "sonar-deep-research")
    assert CATALOG.cost("perplexity", model, usage) == expected


def test_missing_cache_price_bills_at_input() -> None:
    # gemini-3.8-flash lists no context-cache price: cached tokens pay the input rate.
    model = price("google-ai-studio", "gemini-3.8-flash")
    cached = CATALOG.cost("google-ai-studio", model, Usage(1000, 0, 400))
    assert cached == CATALOG.cost("google-ai-studio", model, Usage(1000, 0, 0)) == 750_000


@pytest.mark.parametrize(
    ("provider", "model", "below"),
    [
        # gemini-2.5-pro: <=200k $1.25/$10, >200k $2.50/$15 (whole request)
        ("google-ai-studio", "gemini-2.5-pro", 200_000 * 1250 + 10 * 10_000),
        # claude-haiku-5-5: <=100k $0.10/$0.50, >100k $0.50/$2.50
        ("anthropic", "claude-haiku-5-5", 100_000 * 100 + 10 * 500),
        # grok-4.7: under 200,000 tokens $2/$6; 200,000 and more $4/$12
        ("grok", "grok-4.7", 199_999 * 2000 + 10 * 6000),
    ],
)
def test_long_context_tier_switch(provider: str, model: str, below: int) -> None:
    priced = price(provider, model)
    threshold = priced.tiers[0].above_input_tokens
    at = CATALOG.cost(provider, priced, Usage(input_tokens=threshold, output_tokens=10))
    over = CATALOG.cost(provider, priced, Usage(input_tokens=threshold + 1, output_tokens=10))
    assert at == below
    tier = priced.tiers[0].prices
    assert over == (threshold + 1) * tier.input + 10 * tier.output
    assert over > at


def test_tier_switch_by_hand_gemini_and_haiku_cache() -> None:
    pro = price("google-ai-studio", "gemini-2.5-pro")
    assert CATALOG.cost("google", pro, Usage(200_001, 10)) == 200_001 * 2500 + 10 * 15_000
    # Haiku 5.5 counts cache reads and writes toward the 100k threshold.
    haiku = price("anthropic", "claude-haiku-5-5")
    usage = Usage(
        input_tokens=100_001,
        output_tokens=0,
        cached_input_tokens=90_000,
        cache_write_input_tokens=10_000,
    )
    # long band: 1 x 500 + 90_000 x 50 + 10_000 x 625
    assert CATALOG.cost("anthropic", haiku, usage) == 500 + 4_500_000 + 6_250_000


def test_openai_272k_tier() -> None:
    astra = price("openai", "gpt-6-astra")
    usage = Usage(input_tokens=300_000, output_tokens=1000, cached_input_tokens=100_000)
    # 200_000 x 20_000 + 100_000 x 2_000 + 1000 x 75_000
    assert CATALOG.cost("openai", astra, usage) == 4_000_000_000 + 200_000_000 + 75_000_000


def test_cost_rejects_bad_usage_and_wrong_provider() -> None:
    model = price("openai", "gpt-4o")
    with pytest.raises(ValueError, match="negative"):
        CATALOG.cost("openai", model, Usage(input_tokens=-1))
    with pytest.raises(ValueError, match="inconsistent"):
        CATALOG.cost("openai", model, Usage(input_tokens=1, cached_input_tokens=2))
    with pytest.raises(ValueError, match="provider"):
        CATALOG.cost("anthropic", model, Usage(input_tokens=1))


counts = st.integers(min_value=0, max_value=2_000_000)


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(CATALOG.models()),
    parts=st.tuples(counts, counts, counts, counts, counts),
    which=st.integers(min_value=0, max_value=4),
    bump=st.integers(min_value=1, max_value=500_000),
)
def test_cost_is_monotonic_and_never_negative(
    model: ModelPrice, parts: tuple[int, int, int, int, int], which: int, bump: int
) -> None:
    def usage(p: tuple[int, ...]) -> Usage:
        uncached, cached, write, plain_out, reasoning = p
        return Usage(
            input_tokens=uncached + cached + write,
            output_tokens=plain_out + reasoning,
            cached_input_tokens=cached,
            cache_write_input_tokens=write,
            reasoning_tokens=reasoning,
        )

    more = tuple(n + bump if i == which else n for i, n in enumerate(parts))
    low = CATALOG.cost(model.provider, model, usage(parts))
    high = CATALOG.cost(model.provider, model, usage(more))
    assert 0 <= low <= high


# --- overrides and markup ------------------------------------------------------------------


def test_override_replaces_per_field_and_adds_models() -> None:
    catalog = load_catalog(
        overrides={
            "openai/gpt-4o": {"input": "2.00"},
            "anthropic/claude-haiku-4-5-20251001": {"cached_input": None},
            "workers-ai/llama-local": {
                "context_window": 8192,
                "max_output_tokens": 2048,
                "input": "0.01",
                "output": "0.02",
            },
        }
    )
    gpt = price("openai", "gpt-4o", catalog)
    assert gpt.prices.input == 2000 and gpt.prices.output == 10_000  # output kept
    assert price("anthropic", "claude-haiku-4-5", catalog).prices.cached_input is None
    local = price("workers-ai", "llama-local", catalog)
    assert catalog.cost("workers-ai", local, Usage(100, 100)) == 100 * 10 + 100 * 20


def test_markup_is_exact_and_rounded_once() -> None:
    catalog = load_catalog(markup_percent="12.5")
    model = price("openai", "gpt-4o", catalog)
    assert model.prices.input == Fraction(2500) * Fraction(9, 8)
    usage = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=200)
    assert catalog.cost("openai", model, usage) == 7_250_000 * 9 // 8  # 8_156_250 exactly
    assert model.to_public()["pricing"]["input"] == 2.8125
    # a markup that leaves a fraction of a nano: 1 token of gpt-5-nano output (400) x 1.001
    tiny = load_catalog(markup_percent=Decimal("0.1"))
    nano = price("openai", "gpt-5-nano", tiny)
    assert tiny.cost("openai", nano, Usage(output_tokens=1)) == 400  # 400.4 -> 400
    assert tiny.cost("openai", nano, Usage(output_tokens=5)) == 2002  # 2002.0


def test_bad_markup_rejected() -> None:
    for bad in (-1, "abc", "nan", 1.5):
        with pytest.raises(CatalogError, match="markup_percent"):
            load_catalog(markup_percent=bad)  # type: ignore[arg-type]


# --- malformed data ------------------------------------------------------------------------


def broken(change: dict[str, Any], model_id: str = "openai/gpt-4o") -> dict[str, Any]:
    data = copy.deepcopy(raw_data())
    for row in data["models"]:
        if row["id"] == model_id:
            for key, value in change.items():
                if value is ...:
                    row.pop(key)
                else:
                    row[key] = value
    return data


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"input": ...}, "input", "missing"),
        ({"output": None}, "output", "missing"),
        ({"input": "-1"}, "input", "negative"),
        ({"input": 2.5}, "input", "decimal string"),
        ({"output": "ten"}, "output", "not a decimal"),
        ({"cached_input": "Infinity"}, "cached_input", "finite"),
        ({"context_window": "128k"}, "context_window", "integer"),
        ({"max_output_tokens": 0}, "max_output_tokens", "integer"),
        ({"provider": "anthropic"}, "provider", "prefix"),
        ({"aliases": "gpt-4o-2024-08-06"}, "aliases", "list"),
        ({"Input": "1"}, "Input", "unknown"),
        ({"tiers": [{"above_input_tokens": 10, "input": "1.00"}]}, "tiers[0].input", "cheaper"),
        ({"tiers": [{"above_input_tokens": -5}]}, "tiers[0].above_input_tokens", "integer"),
        ({"tiers": [{"above_input_tokens": 5, "inptu": "9"}]}, "tiers[0].inptu", "unknown"),
        ({"request_fee_per_1k": "5.00"}, "request_fee_per_1k", "object"),
        ({"request_fee_per_1k": {}}, "request_fee_per_1k", "object"),
        ({"request_fee_per_1k": {"huge": "9"}}, "request_fee_per_1k.huge", "unknown search"),
        ({"request_fee_per_1k": {"low": "-5"}}, "request_fee_per_1k.low", "negative"),
        ({"request_fee_per_1k": {"low": 5}}, "request_fee_per_1k.low", "decimal string"),
        ({"search_queries_per_1k": "five"}, "search_queries_per_1k", "not a decimal"),
        ({"citation": "-2"}, "citation", "negative"),
        ({"pro_search_request_fee_per_1k": {"low": "1"}}, "pro_search_request_fee_per_1k", "needs"),
    ],
)
def test_malformed_data_names_model_and_field(
    change: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog(broken(change))
    message = str(error.value)
    assert "'openai/gpt-4o'" in message
    assert f"field '{field}'" in message
    assert problem in message


def test_malformed_catalog_structure() -> None:
    with pytest.raises(CatalogError, match="version"):
        parse_catalog({"version": "today", "models": []})
    with pytest.raises(CatalogError, match="models"):
        parse_catalog({"version": "2026-11-28"})
    data = raw_data()
    data["models"].append(copy.deepcopy(data["models"][0]))
    with pytest.raises(CatalogError, match="listed twice"):
        parse_catalog(data)
    clash = broken({"aliases": ["gpt-4o-mini"]})
    with pytest.raises(CatalogError, match="taken"):
        parse_catalog(clash)


def test_bad_override_rejected() -> None:
    with pytest.raises(CatalogError, match=r"'openai/gpt-4o' field 'input': negative"):
        load_catalog(overrides={"openai/gpt-4o": {"input": "-0.01"}})
    with pytest.raises(CatalogError, match=r"'openai/new-model' field 'input': missing"):
        load_catalog(overrides={"openai/new-model": {"output": "1"}})
    with pytest.raises(CatalogError, match="provider/model"):
        load_catalog(overrides={"gpt-4o": {"input": "1"}})
