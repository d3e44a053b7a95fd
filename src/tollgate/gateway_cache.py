"""Gateway lookups for the hot path: cached, and the `default` gateway created on first use."""

from __future__ import annotations

import time

from tollgate.errors import NotFound
from tollgate.gateway_config import default_gateway_config
from tollgate.store import GatewayRecord, Store
from tollgate.store import gateways as gateway_repo

DEFAULT_GATEWAY_ID = "default"


class GatewayCache:
    """Resolves (account, gateway id) to its record, caching for `ttl` seconds.

    Changes made through this process call `invalidate` and are seen at once; other processes
    see them within `ttl`.
    """

    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[tuple[str, str], tuple[float, GatewayRecord]] = {}

    async def resolve(self, account_id: str, gateway_id: str) -> GatewayRecord:
        """The gateway, creating `default` if absent; 404 for any other missing gateway.

        Call only after the caller is authenticated: only an authenticated request may create
        the `default` gateway.
        """
        key = (account_id, gateway_id)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] <= self._ttl:
            return cached[1]
        if gateway_id == DEFAULT_GATEWAY_ID:
            record = await gateway_repo.ensure_gateway(
                self._store, account_id, gateway_id, default_gateway_config(), is_default=True
            )
        else:
            found = await gateway_repo.get_gateway(self._store, account_id, gateway_id)
            if found is None:
                raise NotFound(
                    f"Gateway '{gateway_id}' does not exist in this account. Create it with "
                    f"POST /client/v4/accounts/{account_id}/ai-gateway/gateways, "
                    "or use the 'default' gateway.",
                    code="gateway_not_found",
                )
            record = found
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), record)
        return record

    async def lookup(self, account_id: str, gateway_id: str) -> GatewayRecord | None:
        """The gateway if it exists; never creates one (for unauthenticated callers)."""
        cached = self._cache.get((account_id, gateway_id))
        if cached is not None and time.monotonic() - cached[0] <= self._ttl:
            return cached[1]
        return await gateway_repo.get_gateway(self._store, account_id, gateway_id)

    def invalidate(self, account_id: str, gateway_id: str) -> None:
        self._cache.pop((account_id, gateway_id), None)
