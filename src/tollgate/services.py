"""Services: everything a request handler may use, built once by `create_app`.

No globals: each surface receives this object explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from tollgate.api.auth import OperatorAuth, TokenVerifier
from tollgate.billing.catalog import Catalog, CatalogError, load_catalog
from tollgate.billing.ledger import Ledger
from tollgate.billing.meter import Meter
from tollgate.billing.payments import build_payment_provider
from tollgate.billing.topup import TopUps
from tollgate.custom_provider_cache import CustomProviderCache
from tollgate.gateway_cache import GatewayCache
from tollgate.settings import Settings, SettingsError
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
    custom_providers: CustomProviderCache
    catalog: Catalog
    ledger: Ledger
    meter: Meter
    topups: TopUps
    # Filled in by the lifespan: in sandbox mode the simulator's address is known only then.
    providers: dict[str, UpstreamTarget] = field(default_factory=dict)
    sandbox_base_url: str | None = None

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Services:
        try:
            catalog = load_catalog(
                overrides=settings.billing.price_overrides,
                markup_percent=settings.billing.markup_percent,
            )
        except CatalogError as exc:
            raise SettingsError(
                f"invalid configuration:\n  billing.price_overrides: {exc}. "
                "Fix [billing.price_overrides] in tollgate.toml."
            ) from None
        store = store or Store(
            settings.database.url, wal_sync_interval=settings.database.wal_sync_interval_seconds
        )
        ledger = Ledger(store, hold_ttl=timedelta(seconds=settings.billing.hold_ttl_seconds))
        topups = TopUps(
            store,
            build_payment_provider(settings),
            fee_percent=settings.billing.purchase_fee_percent,
        )
        admin = settings.operator.admin_token
        return cls(
            settings=settings,
            store=store,
            tokens=TokenVerifier(store),
            operator=OperatorAuth(store, admin.get_secret_value() if admin else None),
            gateways=GatewayCache(store),
            custom_providers=CustomProviderCache(store),
            catalog=catalog,
            ledger=ledger,
            meter=Meter(store, catalog, ledger, on_settled=topups.schedule_auto_topup),
            topups=topups,
        )
