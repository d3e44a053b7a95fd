"""Token minting and verification: prefix, hash-only storage, constant-time compare, cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tollgate.api.auth import TokenVerifier, authorize, hash_token, mint_token
from tollgate.errors import AuthenticationFailed, PermissionDenied
from tollgate.operator import issue_token
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import tokens as token_repo
from tollgate.store.migrate import migrate


def test_minted_tokens_are_prefixed_random_and_hashed() -> None:
    first, second = mint_token(), mint_token()
    assert first.token.startswith("tg_") and first.token != second.token
    assert first.token[3:19] == first.token_id
    assert first.token_hash == hashlib.sha256(first.token.encode()).hexdigest()
    assert len(first.token) >= 3 + 16 + 43  # 256 random bits after the id


async def test_only_the_hash_is_stored_and_the_cache_sees_revocation(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    await migrate(store)
    account = await account_repo.create_account(store, "a")
    record, token = await issue_token(store, account.id, name="t", permissions=frozenset({"run"}))
    stored = await token_repo.get_token(store, record.id)
    assert stored is not None and stored.token_hash == hash_token(token)
    raw = (tmp_path / "t.db").read_bytes()
    assert token.encode() not in raw

    verifier = TokenVerifier(store, ttl=60)
    principal = await verifier.verify(token)
    assert principal.account_id == account.id and principal.permissions == {"run"}
    authorize(principal, account.id, "run")
    with pytest.raises(PermissionDenied):
        authorize(principal, account.id, "edit")
    with pytest.raises(PermissionDenied):
        authorize(principal, "f" * 32, "run")

    # A token with the right id but a different secret is refused.
    forged = token[:19] + "A" * (len(token) - 19)
    with pytest.raises(AuthenticationFailed):
        await verifier.verify(forged)

    await token_repo.revoke_token(store, account.id, record.id)
    await verifier.verify(token)  # still cached for up to ttl...
    verifier.forget_token(record.id)  # ...until this process is told
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(token)
    assert caught.value.code == "revoked_token"
    await store.close()
