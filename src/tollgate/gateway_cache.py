"""Gateway lookups for the hot path: cached, and the `default` gateway created on first use."""

from __future__ import annotations

from tollgate.cache import RefreshingCache
from tollgate.errors import NotFound
from tollgate.gateway_config import default_gateway_config
from tollgate.store import GatewayRecord, Store
from tollgate.store import gateways as gateway_repo

DEFAULT_GATEWAY_ID = "default"


class GatewayCache:
    """Resolves (account, gateway id) to its record through a `RefreshingCache`.

    Changes made through this process call `invalidate` and are seen at once; other processes
    see them within `2 * ttl` (see `tollgate.cache`).
    """

    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._cache: RefreshingCache[tuple[str, str], GatewayRecord | NotFound] = RefreshingCache(
            self._load, ttl=ttl, max_entries=max_entries, confirmed_by=store
        )

    async def resolve(self, account_id: str, gateway_id: str) -> GatewayRecord:
        """The gateway, creating `default` if absent; 404 for any other missing gateway.

        Call only after the caller is authenticated: only an authenticated request may create
        the `default` gateway.
        """
        found = await self._cache.get((account_id, gateway_id))
        if isinstance(found, NotFound):
            # A fresh exception each time: re-raising the cached one would grow its traceback.
            raise NotFound(found.message, code=found.code)
        return found

    async def lookup(self, account_id: str, gateway_id: str) -> GatewayRecord | None:
        """The gateway if it exists; never creates one (for unauthenticated callers)."""
        cached = self._cache.peek((account_id, gateway_id))
        if isinstance(cached, GatewayRecord):
            return cached
        return await gateway_repo.get_gateway(self._store, account_id, gateway_id)

    def invalidate(self, account_id: str, gateway_id: str) -> None:
        self._cache.invalidate((account_id, gateway_id))

    async def _load(self, key: tuple[str, str]) -> GatewayRecord | NotFound:
        account_id, gateway_id = key
        if gateway_id == DEFAULT_GATEWAY_ID:
            return await gateway_repo.ensure_gateway(
                self._store, account_id, gateway_id, default_gateway_config(), is_default=True
            )
        found = await gateway_repo.get_gateway(self._store, account_id, gateway_id)
        if found is not None:
            return found
        return NotFound(
            f"Gateway '{gateway_id}' does not exist in this account. Create it with "
            f"POST /client/v4/accounts/{account_id}/ai-gateway/gateways, "
            "or use the 'default' gateway.",
            code="gateway_not_found",
        )
