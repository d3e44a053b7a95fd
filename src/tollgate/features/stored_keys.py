"""Stored provider keys (BYOK): sealing them at rest, and finding one for a request, cached.

Sealing: AES-256-GCM under the operator's master key (`operator.master_key`), a fresh 96-bit
nonce per seal, and the row's (account, gateway, config id) as associated data, so a sealed key
copied into another row does not open. The stored form is `v1.` + base64url(nonce + sealed).
`key_id` (a hash of the master key, not the key) is stored beside it, so a key sealed under a
different master key is reported as exactly that rather than as corrupt data.

Finding: the data plane asks `StoredKeys.find` once per request that carries no provider key of
its own. It is served from an in-process cache holding every key of one gateway (one indexed
query loads them all), so a gateway without stored keys costs a dictionary lookup, not a
database read. Writes through the management API call `invalidate`, so in this process a
rotation or a deletion applies to the very next request. Other processes (several workers on
one PostgreSQL database) see it within `2 * ttl` (`tollgate.cache.RefreshingCache`).

Plaintext keys live only in this cache and in the upstream request; they are never logged,
never rendered by the API (only `secret_preview`), never written to the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tollgate.cache import RefreshingCache
from tollgate.errors import InvalidRequest, ServiceUnavailable
from tollgate.store import Store
from tollgate.store import provider_configs as config_repo

DEFAULT_ALIAS = "default"
ALIAS = re.compile(r"[A-Za-z0-9_-]{1,64}")
ALIAS_RULE = "1 to 64 characters of letters, digits, '-' and '_'"
ALIAS_HEADER = b"cf-aig-byok-alias"
_FORMAT = "v1."
_NONCE_BYTES = 12
MASTER_KEY_SETTING = "operator.master_key (TOLLGATE_OPERATOR__MASTER_KEY)"


class Unsealable(Exception):
    """A sealed key that does not open: another master key, or altered data."""


class SecretBox:
    """AES-256-GCM with the operator's master key (32 bytes, base64 in the settings)."""

    def __init__(self, master_key: str | None) -> None:
        self._aead: AESGCM | None = None
        self.key_id = ""
        if master_key:
            raw = base64.b64decode(master_key.replace("-", "+").replace("_", "/"))
            self._aead = AESGCM(raw)
            self.key_id = hashlib.sha256(b"tollgate stored keys\0" + raw).hexdigest()[:16]

    @property
    def configured(self) -> bool:
        return self._aead is not None

    def seal(self, secret: str, *context: str) -> str:
        if self._aead is None:
            raise master_key_missing()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), _associated(context))
        return _FORMAT + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, key_id: str, *context: str) -> str:
        if self._aead is None:
            raise Unsealable(f"{MASTER_KEY_SETTING} is not set")
        if key_id != self.key_id:
            raise Unsealable(
                f"it was sealed under another master key (key id {key_id}; the configured "
                f"{MASTER_KEY_SETTING} has key id {self.key_id})"
            )
        try:
            blob = base64.urlsafe_b64decode(stored.removeprefix(_FORMAT))
            nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
            return self._aead.decrypt(nonce, sealed, _associated(context)).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
            raise Unsealable("the stored data does not open (altered or corrupt)") from None


def _associated(context: tuple[str, ...]) -> bytes:
    return "\0".join(context).encode()


def master_key_missing() -> ServiceUnavailable:
    return ServiceUnavailable(
        "This tollgate server cannot store provider keys: the operator has not set "
        f"{MASTER_KEY_SETTING}, the key that encrypts them at rest. Set it to 32 random bytes, "
        "base64-encoded (`openssl rand -base64 32`), and restart.",
        code="master_key_not_configured",
    )


def secret_preview(secret: str) -> str:
    """The masked form the API shows: a few characters of a long key, none of a short one."""
    if len(secret) >= 16:
        return f"{secret[:3]}...{secret[-4:]}"
    return "*" * 8


@dataclass(frozen=True, slots=True)
class _Unusable:
    why: str


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """Every stored key of one gateway, opened."""

    keys: dict[tuple[str, str], str | _Unusable]  # (provider, alias) -> key
    defaults: dict[str, str]  # provider -> the alias of its `default_config` key

    def aliases(self, provider: str) -> list[str]:
        return sorted(alias for slug, alias in self.keys if slug == provider)


_NO_KEYS = GatewayKeys({}, {})


class StoredKeys:
    """The data plane's view of stored keys; `box` also seals them for the management API."""

    def __init__(self, store: Store, master_key: str | None, *, ttl: float = 2.0) -> None:
        self._store = store
        self.box = SecretBox(master_key)
        self._cache: RefreshingCache[tuple[str, str], GatewayKeys] = RefreshingCache(
            self._load, ttl=ttl, confirmed_by=store
        )

    async def find(
        self, account_id: str, gateway_id: str, provider: str, alias: str | None
    ) -> str | None:
        """The key to use for `provider`: the one under `alias` (from `cf-aig-byok-alias`), or
        without one the provider's `default_config` key, else the one aliased `default`.
        None when there is none; an alias that names no key is the client's 400."""
        keys = await self._cache.get((account_id, gateway_id))
        chosen = alias or keys.defaults.get(provider, DEFAULT_ALIAS)
        found = keys.keys.get((provider, chosen))
        if found is None:
            if alias is not None:
                raise unknown_alias(gateway_id, provider, alias, keys.aliases(provider))
            return None
        if isinstance(found, _Unusable):
            raise ServiceUnavailable(
                f"The stored {provider} key '{chosen}' of gateway {gateway_id} cannot be "
                f"decrypted: {found.why}. Restore the master key it was stored under, or "
                "store the key again.",
                code="stored_key_unusable",
            )
        return found

    def invalidate(self, account_id: str, gateway_id: str) -> None:
        self._cache.invalidate((account_id, gateway_id))

    async def _load(self, key: tuple[str, str]) -> GatewayKeys:
        account_id, gateway_id = key
        records = await config_repo.gateway_configs(self._store, account_id, gateway_id)
        if not records:
            return _NO_KEYS
        keys: dict[tuple[str, str], str | _Unusable] = {}
        defaults: dict[str, str] = {}
        for record in records:
            try:
                keys[(record.provider_slug, record.alias)] = self.box.open(
                    record.ciphertext, record.key_id, account_id, gateway_id, record.id
                )
            except Unsealable as exc:
                keys[(record.provider_slug, record.alias)] = _Unusable(str(exc))
            if record.default_config:
                defaults[record.provider_slug] = record.alias
        return GatewayKeys(keys, defaults)


def unknown_alias(gateway_id: str, provider: str, alias: str, known: list[str]) -> InvalidRequest:
    stored = f"Stored aliases: {', '.join(known)}." if known else "It has none."
    return InvalidRequest(
        f"Invalid cf-aig-byok-alias header: gateway {gateway_id} has no stored {provider} key "
        f"with the alias '{alias}'. {stored} Store one with POST .../gateways/{gateway_id}"
        "/provider_configs, or leave the header out to use the default key.",
        code="unknown_byok_alias",
        param=ALIAS_HEADER.decode(),
    )
