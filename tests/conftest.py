"""Shared fixtures: settings on a temporary data directory, databases on both engines, and a
real gateway served on a loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import fresh_postgres_database
from tollgate.settings import Settings, load_settings

ADMIN_TOKEN = "test-operator-token-0123456789abcdef"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the whole test session (created and dropped)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings as `load_settings` would, from a dict of TOLLGATE_* style overrides."""

    def build(env: dict[str, str] | None = None, **sections: Any) -> Settings:
        base = {
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'tollgate.db'}",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        base.update(env or {})
        return load_settings(env=base)

    return build


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on a fresh PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url
