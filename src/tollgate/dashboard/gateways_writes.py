"""The Gateways pages' writes: create, update and delete a gateway exactly as the management API's
routes do (`tollgate.api.management.GatewayRoutes`): the same store calls, then the same caches
dropped, so the data plane sees the change at once."""

from __future__ import annotations

from typing import Any

from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.services import Services
from tollgate.store import GatewayRecord
from tollgate.store import gateways as gateway_repo


class GatewayWrites:
    """Create, update and delete exactly as the management API's routes do: the same store calls,
    then the same caches dropped."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def create(self, account_id: str, gateway_id: str, config: dict[str, Any]) -> None:
        """Raises `gateway_repo.GatewayExists`."""
        await gateway_repo.insert_gateway(
            self.services.store,
            account_id,
            gateway_id,
            config,
            is_default=gateway_id == DEFAULT_GATEWAY_ID,
        )
        self.services.gateways.invalidate(account_id, gateway_id)

    async def update(
        self, account_id: str, gateway_id: str, config: dict[str, Any]
    ) -> GatewayRecord | None:
        record = await gateway_repo.update_gateway(
            self.services.store, account_id, gateway_id, config
        )
        self.services.gateways.invalidate(account_id, gateway_id)
        return record

    async def delete(self, account_id: str, gateway_id: str) -> GatewayRecord | None:
        record = await gateway_repo.delete_gateway(self.services.store, account_id, gateway_id)
        self.services.gateways.invalidate(account_id, gateway_id)
        self.services.stored_keys.invalidate(account_id, gateway_id)  # its keys (CASCADE)
        self.services.logs.forget_count(account_id, gateway_id)  # and its logs
        return record
