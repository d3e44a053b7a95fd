"""The configuration reference in docs/configuration.md is generated from the settings model:
every key is documented, nothing documented is gone, the file matches the rendering, and the
environment variable names it prints are the ones `load_settings` reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate import settings_reference as ref
from tollgate.settings import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_has_a_meaning_and_every_meaning_a_setting() -> None:
    keys = {key for key, _ in ref.settings_fields()}
    assert keys - set(ref.MEANINGS) == set(), "settings without a meaning in MEANINGS"
    assert set(ref.MEANINGS) - keys == set(), "meanings of settings that no longer exist"
    assert set(ref.SHOWN_DEFAULTS) <= keys


def test_the_docs_table_is_the_rendering_of_the_model() -> None:
    text = DOC.read_text()
    generated = text[text.index(ref.BEGIN) + len(ref.BEGIN) : text.index(ref.END)].strip()
    assert generated == ref.render().strip(), "docs/configuration.md is stale: run `make docs`"


def test_the_table_shows_the_models_defaults_and_bounds() -> None:
    rows = {line.split("|")[1].strip(): line for line in ref.render_keys_table().splitlines()}
    port = rows["`server.port`<br>`TOLLGATE_SERVER__PORT`"]
    assert "`8787`" in port and "≤ 65535" in port
    assert (
        "`sandbox`, `stripe`"
        in rows["`billing.payment_provider`<br>`TOLLGATE_BILLING__PAYMENT_PROVIDER`"]
    )
    assert "(256 KiB)" in rows["`logs.body_max_bytes`<br>`TOLLGATE_LOGS__BODY_MAX_BYTES`"]


@pytest.mark.parametrize(
    ("key", "raw", "read"),
    [
        ("server.port", "9001", lambda s: s.server.port == 9001),
        ("logs.batch_size", "7", lambda s: s.logs.batch_size == 7),
        (
            "billing.allow_custom_cost_unified",
            "true",
            lambda s: s.billing.allow_custom_cost_unified is True,
        ),
        ("redis.key_prefix", "x:", lambda s: s.redis.key_prefix == "x:"),
        ("log_level", "debug", lambda s: s.log_level == "debug"),
    ],
)
def test_the_documented_variable_sets_the_key(key: str, raw: str, read: object) -> None:
    settings = load_settings(env={ref.environment_name(key): raw})
    assert callable(read) and read(settings)


def test_provider_variables_name_the_slug_with_underscores() -> None:
    name = ref.environment_name("providers.<slug>.base_url").replace("<SLUG>", "GOOGLE_AI_STUDIO")
    settings = load_settings(env={name: "https://gemini.example"})
    assert settings.providers["google-ai-studio"].base_url == "https://gemini.example"


def test_rewrite_replaces_only_the_generated_part(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    target.write_text(f"# Before\n\n{ref.BEGIN}\nstale\n{ref.END}\n\nAfter.\n")
    assert ref.rewrite(target) is True
    text = target.read_text()
    assert text.startswith("# Before\n\n") and text.endswith("\n\nAfter.\n")
    assert "stale" not in text and "`server.port`" in text
    assert ref.rewrite(target) is False  # already up to date
