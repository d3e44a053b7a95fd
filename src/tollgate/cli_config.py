"""`tollgate config show`: the effective settings, every secret masked.

The settings are what `load_settings` builds (defaults, then the TOML file, then `TOLLGATE_*`
and provider key variables), so this is what `tollgate serve` would run with. Masked:

- every `SecretStr` (admin token, master key, provider API keys, Stripe keys): `********` when
  set, null when not;
- any other value whose name says it is a secret (`*_key`, `*token*`, `*secret*`, `*password*`);
- passwords inside URLs (`postgresql://user:***@host/db`, `redis://:***@host`) and secret-looking
  query parameters (`?password=***`, `?key=***`).
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr

from tollgate.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    key_value_table,
    load_settings_or_exit,
    print_json,
    redact,
)

MASK = "********"
_SECRET_NAME = re.compile(r"(^|_)key$|token|secret|password|passwd", re.IGNORECASE)

config_app = typer.Typer(help="Show the configuration tollgate runs with.")


def masked(value: Any, name: str = "") -> Any:
    """A JSON-ready copy of a settings dump with every secret masked (see the module doc)."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {str(k): masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, name) for v in value]
    if isinstance(value, str):
        if _SECRET_NAME.search(name):
            return MASK
        return redact(value) if "://" in value else value
    if isinstance(value, Decimal | Path):
        return str(value)
    return value


def _config_file(config: Path | None) -> str | None:
    """The file `load_settings` read, as it chooses it (`tollgate.settings`)."""
    chosen = config or os.environ.get("TOLLGATE_CONFIG")
    if chosen:
        return str(chosen)
    return "tollgate.toml" if Path("tollgate.toml").is_file() else None


def _rows(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += _rows(f"{prefix}.{key}" if prefix else str(key), item)
        return rows
    if value is None:
        shown = "-"
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    elif value == {}:
        shown = "{}"
    else:
        shown = str(value)
    return [(prefix, shown)]


@config_app.command("show")
def config_show(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show the effective settings (file, then environment), with every secret masked."""
    settings = load_settings_or_exit(config)
    body = {
        "config_file": _config_file(config),
        "sandbox_mode": settings.sandbox_mode,
        "settings": masked(settings.model_dump()),
    }
    if as_json:
        print_json(body)
        return
    table = key_value_table()
    table.add_row("config file", body["config_file"] or "(none: defaults and environment)")
    table.add_row("sandbox mode", "yes" if body["sandbox_mode"] else "no")
    for key, shown in _rows("", body["settings"]):
        table.add_row(key, shown)
    console().print(table)
