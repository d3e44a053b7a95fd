"""API tokens and operator tokens. Only hashes are stored; minting lives in `tollgate.api.auth`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from tollgate.store._util import now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.models import ApiToken
from tollgate.store.schema import api_tokens, operator_tokens


def _token(row: Any) -> ApiToken:
    return ApiToken(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        token_hash=row.token_hash,
        permissions=frozenset(p for p in row.permissions.split(",") if p),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        created_at=row.created_at,
    )


async def insert_token(
    store: Store,
    *,
    token_id: str,
    account_id: str,
    name: str,
    token_hash: str,
    permissions: frozenset[str],
    expires_at: datetime | None,
) -> ApiToken:
    token = ApiToken(
        id=token_id,
        account_id=account_id,
        name=name,
        token_hash=token_hash,
        permissions=frozenset(permissions),
        expires_at=expires_at,
        revoked_at=None,
        last_used_at=None,
        created_at=now(),
    )
    async with store.write() as conn:
        await conn.execute(
            api_tokens.insert().values(
                id=token.id,
                account_id=token.account_id,
                name=token.name,
                token_hash=token.token_hash,
                permissions=",".join(sorted(token.permissions)),
                expires_at=token.expires_at,
                created_at=token.created_at,
            )
        )
    return token


async def get_token(store: Store, token_id: str) -> ApiToken | None:
    async with store.read() as conn:
        row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).first()
    return _token(row) if row else None


async def list_tokens(store: Store, account_id: str) -> list[ApiToken]:
    async with store.read() as conn:
        rows = await conn.execute(
            select(api_tokens)
            .where(api_tokens.c.account_id == account_id)
            .order_by(api_tokens.c.created_at, api_tokens.c.id)
        )
        return [_token(r) for r in rows]


async def revoke_token(store: Store, account_id: str, token_id: str) -> ApiToken | None:
    """Revoke a token of this account; revoking twice keeps the first revocation time."""
    async with store.write() as conn:
        await conn.execute(
            update(api_tokens)
            .where(
                api_tokens.c.id == token_id,
                api_tokens.c.account_id == account_id,
                api_tokens.c.revoked_at.is_(None),
            )
            .values(revoked_at=now())
        )
        row = (
            await conn.execute(
                select(api_tokens).where(
                    api_tokens.c.id == token_id, api_tokens.c.account_id == account_id
                )
            )
        ).first()
        if row is not None:  # every process drops the token from its cache
            await publish(store, conn, CacheEventKind.TOKEN, token_id)
    return _token(row) if row else None


async def insert_operator_token(store: Store, token_id: str, token_hash: str) -> None:
    async with store.write() as conn:
        await conn.execute(
            operator_tokens.insert().values(id=token_id, token_hash=token_hash, created_at=now())
        )


async def get_operator_token_hash(store: Store, token_id: str) -> str | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(operator_tokens.c.token_hash).where(operator_tokens.c.id == token_id)
            )
        ).first()
    return row.token_hash if row else None


async def count_operator_tokens(store: Store) -> int:
    async with store.read() as conn:
        return len((await conn.execute(select(operator_tokens.c.id))).all())
