"""Seed accounts and tokens straight into a store, before or beside a running gateway."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from tollgate.operator import grant_credits, issue_token
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import tokens as token_repo
from tollgate.store.migrate import migrate


@dataclass(frozen=True)
class Seeded:
    account_id: str
    token: str
    token_id: str


async def seed_account_async(
    database_url: str,
    *,
    permissions: frozenset[str] = frozenset({"run", "read", "edit"}),
    expires_at: datetime | None = None,
    name: str = "test account",
    credits_cents: int = 10_000,
) -> Seeded:
    store = Store(database_url)
    try:
        await migrate(store)
        account = await account_repo.create_account(store, name)
        record, token = await issue_token(
            store, account.id, name="test token", permissions=permissions, expires_at=expires_at
        )
        if credits_cents:
            await grant_credits(store, account.id, amount_cents=credits_cents, note="test credits")
        return Seeded(account.id, token, record.id)
    finally:
        await store.close()


def seed_account(database_url: str, **kwargs: object) -> Seeded:
    return asyncio.run(seed_account_async(database_url, **kwargs))  # type: ignore[arg-type]


def add_token(
    database_url: str,
    account_id: str,
    *,
    permissions: frozenset[str],
    expires_at: datetime | None = None,
) -> str:
    async def run() -> str:
        store = Store(database_url)
        try:
            _, token = await issue_token(
                store, account_id, name="extra", permissions=permissions, expires_at=expires_at
            )
            return token
        finally:
            await store.close()

    return asyncio.run(run())


def revoke(database_url: str, account_id: str, token_id: str) -> None:
    async def run() -> None:
        store = Store(database_url)
        try:
            await token_repo.revoke_token(store, account_id, token_id)
        finally:
            await store.close()

    asyncio.run(run())
