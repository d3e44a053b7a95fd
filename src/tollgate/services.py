"""Services: everything a request handler may use, built once by `create_app`.

No globals: each surface receives this object explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate.api.auth import OperatorAuth, TokenVerifier
from tollgate.gateway_cache import GatewayCache
from tollgate.settings import Settings
from tollgate.store import Store


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where a provider's managed (Unified Billing) requests go, with which key."""

    slug: str
    base_url: str
    api_key: str | None


@dataclass
class Services:
    settings: Settings
    store: Store
    tokens: TokenVerifier
    operator: OperatorAuth
    gateways: GatewayCache
    # Filled in by the lifespan: in sandbox mode the simulator's address is known only then.
    providers: dict[str, UpstreamTarget] = field(default_factory=dict)
    sandbox_base_url: str | None = None

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Services:
        store = store or Store(settings.database.url)
        admin = settings.operator.admin_token
        return cls(
            settings=settings,
            store=store,
            tokens=TokenVerifier(store),
            operator=OperatorAuth(store, admin.get_secret_value() if admin else None),
            gateways=GatewayCache(store),
        )
