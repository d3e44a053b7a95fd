"""Creating, updating and deleting a gateway in a running gateway process: the store call, then
every cache that must drop it, so the data plane sees the change at once. The management API's
routes and the dashboard's Gateways pages both write through here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.store import GatewayRecord
from tollgate.store import gateways as gateway_repo

if TYPE_CHECKING:
    from tollgate.services import Services


class GatewayWrites:
    """Create, update and delete a gateway, and drop what the process caches about it."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def create(
        self, account_id: str, gateway_id: str, config: dict[str, Any]
    ) -> GatewayRecord:
        """Raises `gateway_repo.GatewayExists`."""
        record = await gateway_repo.insert_gateway(
            self.services.store,
            account_id,
            gateway_id,
            config,
            is_default=gateway_id == DEFAULT_GATEWAY_ID,
        )
        self.services.gateways.invalidate(account_id, gateway_id)
        return record

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
