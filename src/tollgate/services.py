"""Services: everything a request handler may use, built once by `create_app`.

No globals: each surface receives this object explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from pydantic import SecretStr
from redis.asyncio import Redis

from tollgate.api.auth import OperatorAuth, TokenVerifier
from tollgate.billing.catalog import Catalog, CatalogError, load_catalog
from tollgate.billing.leases import CreditLeases
from tollgate.billing.ledger import Ledger
from tollgate.billing.meter import Meter
from tollgate.billing.payments import build_payment_provider
from tollgate.billing.topup import TopUps
from tollgate.custom_provider_cache import CustomProviderCache
from tollgate.features.logs import LogWriter
from tollgate.features.ratelimit import RateLimiter
from tollgate.features.redis import redis_client
from tollgate.features.response_cache import ResponseCache, build_response_cache
from tollgate.features.stored_keys import StoredKeys
from tollgate.gateway_cache import GatewayCache
from tollgate.metrics import Metrics
from tollgate.settings import Settings, SettingsError
from tollgate.store import Store


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where a provider's managed (Unified Billing) requests go, with which key."""

    slug: str
    base_url: str
    api_key: str | None
    # The operator's Zero Data Retention credentials for the provider, if any (credentials.py).
    zdr: UpstreamTarget | None = None


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
    stored_keys: StoredKeys
    redis: Redis | None  # one shared client when `[redis] url` is set; closed by the lifespan
    rate_limiter: RateLimiter
    response_cache: ResponseCache
    # Filled in by the lifespan: in sandbox mode the simulator's address is known only then.
    providers: dict[str, UpstreamTarget] = field(default_factory=dict)
    sandbox_base_url: str | None = None
    # The request log writer (features/logs.py); the lifespan starts it and flushes it last.
    logs: LogWriter = field(init=False)
    # The Prometheus registry behind `/metrics` (metrics.py): counted on the request's path.
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.logs = LogWriter(self.store, self.gateways, self.settings.logs)
        self.metrics = Metrics(self.store)

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
            settings.database.url,
            wal_sync_interval=settings.database.wal_sync_interval_seconds,
            max_connections=settings.database.max_connections,
        )
        hold_ttl = timedelta(seconds=settings.billing.hold_ttl_seconds)
        leases = (
            CreditLeases(
                store,
                hold_ttl=hold_ttl,
                commit_delay=settings.billing.commit_delay_ms / 1000,
                settle_interval=settings.billing.settle_interval_ms / 1000,
            )
            if store.dialect == "sqlite" and settings.billing.credit_leases
            else None
        )
        if leases is not None:  # a reader of the books sees every answered settlement
            store.before_read = leases.flush
        ledger = Ledger(store, hold_ttl=hold_ttl, leases=leases)
        topups = TopUps(
            store,
            build_payment_provider(settings),
            fee_percent=settings.billing.purchase_fee_percent,
        )
        admin = settings.operator.admin_token
        redis = redis_client(settings.redis)
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
            stored_keys=StoredKeys(store, _secret(settings.operator.master_key)),
            redis=redis,
            rate_limiter=RateLimiter(redis, settings.redis.key_prefix),
            response_cache=build_response_cache(
                redis,
                settings.redis.key_prefix,
                max_entry_bytes=settings.cache.max_entry_bytes,
                memory_max_bytes=settings.cache.memory_max_bytes,
            ),
        )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
