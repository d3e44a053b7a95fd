"""CLI fixtures: a clean environment (no TOLLGATE_* or provider keys) on a temporary database."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tollgate.cli import app
from tollgate.providers.registry import PROVIDERS

PROVIDER_KEYS = {row.key_env for row in PROVIDERS.values()}


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The current environment without tollgate settings or provider keys, on tmp_path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOLLGATE_") and k not in PROVIDER_KEYS
    }
    env["TOLLGATE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    env["TOLLGATE_DATA_DIR"] = str(tmp_path / "data")
    return env


@dataclass
class Cli:
    env: dict[str, str]
    runner: CliRunner

    def __call__(self, *args: str, **env: str) -> Result:
        return self.runner.invoke(app, list(args), env={**self.env, **env})

    def json(self, *args: str, **env: str) -> Any:
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def account(self, name: str = "acme") -> str:
        return str(self.json("accounts", "create", name)["id"])


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)  # no stray ./tollgate.toml
    for name in list(os.environ):
        if name.startswith("TOLLGATE_") or name in PROVIDER_KEYS:
            monkeypatch.delenv(name)
    return Cli(clean_env(tmp_path), CliRunner())


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "tollgate.toml"
        path.write_text(text)
        return path

    return write
