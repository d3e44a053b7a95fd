"""API tokens: minting, verification (cached, constant-time) and permission checks.

A token looks like `tg_<16 hex id><43 url-safe chars>`. The id is the non-secret lookup key; the
database keeps only the SHA-256 of the whole token (the secret part carries 256 random bits, so a
plain hash is enough, and no pepper can be lost). Verification compares hashes with
`hmac.compare_digest`.

Operator tokens generated at first start look like `tgop_<16 hex id><43 chars>` and live in their
own table; a configured `operator.admin_token` is compared directly.

The hot path never waits on the database for a token it has seen recently (`tollgate.cache`).
Revocation and account changes made through this process drop the cache entry at once; other
processes see them within `2 * ttl`. The cache is keyed by the token itself, in memory only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from tollgate.cache import RefreshingCache
from tollgate.errors import AuthenticationFailed, NotFound, PermissionDenied
from tollgate.ids import ACCOUNT_ID
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import tokens as token_repo

TOKEN_PREFIX = "tg_"  # noqa: S105 (a prefix, not a secret)
OPERATOR_PREFIX = "tgop_"
PERMISSIONS = frozenset({"run", "read", "edit"})
_ID_LEN = 16


@dataclass(frozen=True, slots=True)
class MintedToken:
    token_id: str
    token: str  # shown once, never stored
    token_hash: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an account's token and what it may do."""

    account_id: str
    token_id: str
    permissions: frozenset[str]
    expires_at: datetime | None
    account_active: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint_token(prefix: str = TOKEN_PREFIX) -> MintedToken:
    token_id = secrets.token_hex(_ID_LEN // 2)
    token = f"{prefix}{token_id}{secrets.token_urlsafe(32)}"
    return MintedToken(token_id, token, hash_token(token))


def looks_like_token(value: str) -> bool:
    """True for anything in tollgate's token format; such a value is never a provider key."""
    return value.startswith(TOKEN_PREFIX) or value.startswith(OPERATOR_PREFIX)


def bearer_value(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenVerifier:
    """Verifies account tokens through a `RefreshingCache` (see `tollgate.cache`)."""

    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._cache: RefreshingCache[str, Principal | AuthenticationFailed] = RefreshingCache(
            self._lookup, ttl=ttl, max_entries=max_entries, confirmed_by=store
        )

    async def verify(self, token: str) -> Principal:
        """Return the token's principal or raise `AuthenticationFailed` (401)."""
        outcome = await self._cache.get(token)
        if isinstance(outcome, AuthenticationFailed):
            # A fresh exception each time: re-raising the cached one would grow its traceback.
            raise AuthenticationFailed(outcome.message, code=outcome.code)
        if outcome.expires_at is not None and outcome.expires_at <= datetime.now(UTC):
            raise AuthenticationFailed(
                "This API token has expired. Create a new token and use it instead.",
                code="expired_token",
            )
        return outcome

    async def _lookup(self, token: str) -> Principal | AuthenticationFailed:
        invalid = AuthenticationFailed(
            "The API token is not valid. Check that you copied the whole tg_... token.",
            code="invalid_token",
        )
        if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + _ID_LEN + 16:
            return invalid
        row = await token_repo.get_token(self._store, token[len(TOKEN_PREFIX) :][:_ID_LEN])
        if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
            return invalid
        if row.revoked_at is not None:
            return AuthenticationFailed(
                "This API token was revoked. Create a new token and use it instead.",
                code="revoked_token",
            )
        account = await account_repo.get_account(self._store, row.account_id)
        return Principal(
            account_id=row.account_id,
            token_id=row.id,
            permissions=row.permissions,
            expires_at=row.expires_at,
            account_active=account is not None and account.status == "active",
        )

    def forget_token(self, token_id: str) -> None:
        """Drop a token from the cache (after revocation)."""
        self._cache.invalidate_where(
            lambda _, outcome: isinstance(outcome, Principal) and outcome.token_id == token_id
        )

    def forget_account(self, account_id: str) -> None:
        """Drop every cached token of an account (after it is disabled or enabled)."""
        self._cache.invalidate_where(
            lambda _, outcome: isinstance(outcome, Principal) and outcome.account_id == account_id
        )


def authorize(principal: Principal, account_id: str, permission: str) -> None:
    """Raise 403 unless the principal belongs to `account_id` and holds `permission`."""
    if principal.account_id != account_id:
        raise PermissionDenied(
            "This API token belongs to another account. Use a token of the account in the URL.",
            code="wrong_account",
        )
    if not principal.account_active:
        raise PermissionDenied(
            "This account is disabled. Ask the gateway operator to enable it.",
            code="account_disabled",
        )
    if permission not in principal.permissions:
        raise PermissionDenied(
            f"This API token lacks the '{permission}' permission. "
            f"Create a token with '{permission}' for this call.",
            code="missing_permission",
        )


class OperatorAuth:
    """Checks the operator's admin token: the configured one, or one generated at first start."""

    def __init__(self, store: Store, configured: str | None) -> None:
        self._store = store
        self._configured_hash = hash_token(configured) if configured else None
        self._valid: set[str] = set()  # hashes of generated operator tokens seen valid

    async def check(self, token: str | None) -> None:
        if not token:
            raise AuthenticationFailed(
                "The admin API needs the operator token: send 'Authorization: Bearer <token>'.",
                code="missing_token",
            )
        digest = hash_token(token)
        if self._configured_hash and hmac.compare_digest(self._configured_hash, digest):
            return
        if digest in self._valid:
            return
        if token.startswith(OPERATOR_PREFIX):
            stored = await token_repo.get_operator_token_hash(
                self._store, token[len(OPERATOR_PREFIX) :][:_ID_LEN]
            )
            if stored is not None and hmac.compare_digest(stored, digest):
                self._valid.add(digest)
                return
        raise AuthenticationFailed(
            "The operator token is not valid. Use TOLLGATE_ADMIN_TOKEN or the token printed at "
            "first start.",
            code="invalid_token",
        )


async def authorize_api_call(
    verifier: TokenVerifier,
    authorization: str | None,
    account_id: str,
    permission: str,
    *,
    sent_global_key: bool = False,
) -> Principal:
    """The `/client/v4` check: a Bearer token, of this account, holding `permission`.

    401 without a valid token, 404 for a malformed account id (after authentication, so the
    answer reveals nothing to strangers), 403 for another account's token or a missing
    permission.
    """
    token = bearer_value(authorization)
    if token is None:
        hint = (
            " Global API keys (X-Auth-Key) are not supported; use an API token."
            if sent_global_key
            else ""
        )
        raise AuthenticationFailed(
            "This API needs an API token: send 'Authorization: Bearer <tg_... token>'." + hint,
            code="missing_token",
        )
    principal = await verifier.verify(token)
    if not ACCOUNT_ID.fullmatch(account_id):
        shown = account_id if len(account_id) <= 80 else account_id[:77] + "..."
        raise NotFound(
            f"'{shown}' is not an account id: account ids are 32 lowercase hexadecimal characters.",
            code="account_not_found",
        )
    authorize(principal, account_id, permission)
    return principal
