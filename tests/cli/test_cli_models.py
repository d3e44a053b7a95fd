"""`tollgate models`: the price catalog the server charges by, as `/ai/models/search` shows it."""

from __future__ import annotations

import re

import pytest

from tests.cli.conftest import Cli
from tests.cli.test_cli import one_error_line
from tollgate.billing.catalog import load_catalog


def test_json_is_the_catalog_in_the_api_shape(cli: Cli) -> None:
    catalog = load_catalog()
    body = cli.json("models")
    assert body["models"] == [m.to_public() for m in catalog.models()]
    assert (body["total"], body["catalog_version"]) == (len(catalog.models()), catalog.version)
    first = body["models"][0]
    assert set(first) == {"id", "provider", "context_window", "max_output_tokens", "pricing"}
    assert {"currency", "input", "output", "cached_input", "cache_write"} <= set(first["pricing"])


def test_search_and_provider_filters(cli: Cli) -> None:
    anthropic = cli.json("models", "--provider", "anthropic")["models"]
    assert anthropic and {m["provider"] for m in anthropic} == {"anthropic"}
    google = cli.json("models", "--provider", "google")["models"]  # an alias of the slug
    assert google and {m["provider"] for m in google} == {"google-ai-studio"}
    found = cli.json("models", "--search", "GPT-4O-MINI")["models"]
    assert found and all("gpt-4o-mini" in m["id"] for m in found)
    assert cli.json("models", "--search", "no-such-model-anywhere") == {
        "models": [],
        "total": 0,
        "catalog_version": load_catalog().version,
    }
    assert "No models match" in cli("models", "--search", "no-such-model-anywhere").stdout


def test_unknown_provider_exits_2(cli: Cli) -> None:
    result = cli("models", "--provider", "nope")
    assert result.exit_code == 2
    assert "unknown provider 'nope'" in one_error_line(result.stderr)


def test_price_overrides_and_markup_apply(cli: Cli) -> None:
    overrides = '{"openai/gpt-4o-mini": {"input": "1.00"}}'
    [model] = cli.json(
        "models",
        "--search",
        "openai/gpt-4o-mini",
        TOLLGATE_BILLING__PRICE_OVERRIDES=overrides,
        TOLLGATE_BILLING__MARKUP_PERCENT="10",
    )["models"][:1]
    assert model["id"] == "openai/gpt-4o-mini" and model["pricing"]["input"] == 1.1
    bad = cli("models", TOLLGATE_BILLING__PRICE_OVERRIDES='{"openai/gpt-4o-mini": {"input": "x"}}')
    assert bad.exit_code == 2 and "price_overrides" in one_error_line(bad.stderr)


@pytest.mark.parametrize(("width", "columns"), [(50, 3), (60, 4), (80, 5), (140, 6)])
def test_table_fits_the_terminal_and_keeps_ids_readable(cli: Cli, width: int, columns: int) -> None:
    result = cli("models", COLUMNS=str(width))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= width for line in lines), result.stdout
    header = next(line for line in lines if "MODEL" in line)
    assert len(re.findall(r"INPUT|OUTPUT|CACHED IN|CACHE WRITE|CONTEXT", header)) == columns - 1
    text = " ".join(result.stdout.split())
    assert "$0.15" in text  # gpt-4o-mini's input price per million tokens
    for model in load_catalog().models()[:5]:  # each id is in the table, whole or folded
        assert model.id[:10] in result.stdout
    assert ("hidden: too narrow" in text) is (columns < 6)
