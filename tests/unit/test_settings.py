"""Settings: one frozen object from defaults, tollgate.toml and TOLLGATE_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tollgate.settings import SettingsError, load_settings


def test_defaults_are_sandbox_on_sqlite() -> None:
    settings = load_settings(env={})
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8787
    assert settings.database.url == "sqlite:///./data/tollgate.db"
    assert settings.server.max_body_bytes == 10 * 1024 * 1024
    assert settings.sandbox_mode is True


def test_a_provider_key_in_the_environment_leaves_sandbox_mode() -> None:
    settings = load_settings(env={"OPENAI_API_KEY": "sk-real"})
    assert settings.sandbox_mode is False
    assert settings.providers["openai"].api_key is not None
    assert settings.providers["openai"].api_key.get_secret_value() == "sk-real"


def test_toml_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.toml"
    config.write_text(
        """
[server]
port = 9000
host = "0.0.0.0"
[providers.openai]
base_url = "https://example.test/v1/"
api_key = "${MY_KEY}"
[providers.google-ai-studio]
api_key = "${UNSET_VARIABLE}"
base_url = "https://g.example.test"
"""
    )
    settings = load_settings(config, env={"MY_KEY": "sk-from-env", "TOLLGATE_SERVER__PORT": "9100"})
    assert settings.server.port == 9100  # the environment wins over the file
    assert settings.server.host == "0.0.0.0"
    assert settings.providers["openai"].base_url == "https://example.test/v1"
    assert settings.providers["openai"].api_key.get_secret_value() == "sk-from-env"  # type: ignore[union-attr]
    assert settings.providers["google-ai-studio"].api_key is None  # unset reference = not set


def test_provider_slug_with_hyphens_from_the_environment() -> None:
    settings = load_settings(env={"TOLLGATE_PROVIDERS__GOOGLE_AI_STUDIO__API_KEY": "g-key"})
    assert settings.providers["google-ai-studio"].api_key.get_secret_value() == "g-key"  # type: ignore[union-attr]


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("[server]\nport = 7000\n")
    assert load_settings(env={"TOLLGATE_CONFIG": str(config)}).server.port == 7000


def test_settings_are_frozen() -> None:
    settings = load_settings(env={})
    with pytest.raises(ValidationError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TOLLGATE_SERVER__PORT": "eighty"}, ["server.port", "TOLLGATE_SERVER__PORT", "integer"]),
        ({"TOLLGATE_SERVER__PORT": "70000"}, ["server.port", "65535"]),
        ({"TOLLGATE_SERVER__PROT": "1"}, ["server.prot", "not a known setting"]),
        ({"TOLLGATE_DATABASE_URL": "mysql://x/y"}, ["database.url", "postgresql://"]),
        (
            {"TOLLGATE_PROVIDERS__OPENAI__BASE_URL": "api.openai.com"},
            ["providers.openai.base_url", "https://"],
        ),
        ({"TOLLGATE_PROVIDERS__NOPE__API_KEY": "x"}, ["unknown provider 'nope'"]),
        ({"TOLLGATE_LOG_LEVEL": "loud"}, ["log_level", "debug"]),
        ({"TOLLGATE_SERVER__MAX_BODY_BYTES": "-1"}, ["server.max_body_bytes"]),
        ({"TOLLGATE_BILLING__PURCHASE_FEE_PERCENT": "150"}, ["purchase_fee_percent", "100"]),
    ],
)
def test_bad_values_stop_start_up_naming_the_key(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    for name in names:
        assert name in str(caught.value)


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken, env={})
