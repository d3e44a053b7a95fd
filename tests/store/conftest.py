"""Store fixtures: a migrated store on each engine (see `database_url` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store.migrate import migrate


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def account(store: Store) -> Account:
    return await account_repo.create_account(store, "store test account")
