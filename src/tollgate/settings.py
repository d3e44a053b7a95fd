"""Settings: one frozen object, built once from `tollgate.toml` and `TOLLGATE_*` variables.

Precedence, lowest first: built-in defaults, the TOML file (`--config`, `TOLLGATE_CONFIG`, or
`./tollgate.toml` when present), then environment variables. Nested keys use a double underscore:
`TOLLGATE_SERVER__PORT=9000`, `TOLLGATE_PROVIDERS__GOOGLE_AI_STUDIO__API_KEY=...` (underscores in
a provider slug stand for its hyphens). Shortcuts: `TOLLGATE_ADMIN_TOKEN`, `TOLLGATE_DATABASE_URL`.
String values in the TOML file may reference the environment as `${NAME}`.

A bad value stops start-up with `SettingsError`, whose message names the key, says what is
expected and where to set it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from tollgate.netguard import parse_networks
from tollgate.providers.registry import PROVIDERS

_FROZEN = ConfigDict(frozen=True, extra="forbid")
SANDBOX_KEY = "sandbox-managed-key"


class SettingsError(Exception):
    """The configuration is invalid; the message says which key and how to fix it."""


class ServerSettings(BaseModel):
    model_config = _FROZEN
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    public_url: str | None = None  # what the gateway calls itself in printed URLs
    # Request limits (api/dataplane.py, request_limits.py): each refused with a 4xx in the
    # format of the endpoint called, before anything is stored or sent. The server itself
    # (http_protocol.py) closes connections far past the header limits, and slow ones.
    max_header_count: int = Field(100, ge=10, le=10_000)
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    # 64 levels is far more than any provider's request needs; orjson cannot write past ~250.
    max_json_depth: int = Field(64, ge=8, le=200)
    max_messages: int = Field(10_000, ge=1)
    # Slow clients: a request's headers must arrive within header_timeout_seconds (from the
    # connection's start or the request's first byte), its body within body_timeout_seconds.
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # An idle kept-alive connection is closed after this; behind a load balancer, set it above
    # the balancer's own idle timeout.
    keep_alive_timeout_seconds: float = Field(5.0, gt=0, le=3600)
    # `tollgate serve` runs this many gateway processes on one listening socket (serve_workers.py).
    workers: int = Field(1, ge=1, le=64)
    # On SIGTERM the server stops accepting, lets requests and streams in flight finish for up
    # to this long, then closes what is left; the settlements and logs are written either way.
    shutdown_grace_seconds: int = Field(30, ge=0, le=3600)


class DatabaseSettings(BaseModel):
    model_config = _FROZEN
    url: str = "sqlite:///./data/tollgate.db"
    # SQLite: how often the WAL of the ledger's hot writes is synced to disk, which bounds what
    # an OS crash or power loss could lose (store/loop_writer.py). A killed process loses nothing.
    # 0.1 s: measured shorter stalls than 1 s at the same CPU (docs/operations.md, sizing).
    wal_sync_interval_seconds: float = Field(0.1, gt=0, le=60)
    # How often each process reads the changes other processes (and the CLI) made to what it
    # caches: revoked tokens, gateways, custom providers, ... (tollgate/cache_events.py). 0 turns
    # it off; those changes are then seen only when the cache entries expire (up to 10 s).
    cache_events_poll_seconds: float = Field(0.25, ge=0, le=5)
    # PostgreSQL: the most connections one process opens (half kept open, half opened under
    # load and closed after). N processes need N x this within the server's max_connections.
    max_connections: int = Field(20, ge=2, le=1000)

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str) -> str:
        scheme = url.split("://", 1)[0]
        if scheme not in {
            "sqlite",
            "sqlite+aiosqlite",
            "postgresql",
            "postgres",
            "postgresql+asyncpg",
        }:
            raise ValueError("expected a sqlite:///path or postgresql://user@host/db URL")
        return url


class OperatorSettings(BaseModel):
    model_config = _FROZEN
    admin_token: SecretStr | None = None
    # Encrypts stored provider keys (BYOK provider_configs) at rest with AES-256-GCM: 32 random
    # bytes, base64-encoded (`openssl rand -base64 32`). Without it, no key can be stored.
    master_key: SecretStr | None = None

    @field_validator("master_key", mode="before")
    @classmethod
    def _master_key_bytes(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        try:
            raw = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            # Never echo the value: it is a secret.
            raise ValueError(
                "expected 32 random bytes, base64-encoded (generate one with "
                "`openssl rand -base64 32`)"
            )
        return text.strip()


class BillingSettings(BaseModel):
    model_config = _FROZEN
    payment_provider: Literal["sandbox", "stripe"] = "sandbox"
    purchase_fee_percent: Decimal = Field(Decimal(0), ge=0, le=100)
    # Added to every catalog price, exactly (e.g. 5 = +5%).
    markup_percent: Decimal = Field(Decimal(0), ge=0, le=1000)
    # Per-model price changes or additions: {"openai/gpt-4o": {"input": "2.00", ...}} in USD per
    # million tokens, as decimal strings (see docs/configuration.md).
    price_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The stripe payment provider: the account's secret key, the webhook signing secret, and an
    # API base for a Stripe-compatible server (tests); see docs/configuration.md.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    # How long a hold lives before crash recovery may resolve it (billing/ledger.py). The meter
    # extends the holds of requests in flight every third of it (Meter.keep_alive).
    hold_ttl_seconds: int = Field(900, ge=1)
    # The background maintenance (billing/maintenance.py): recover expired holds, prune what can
    # no longer count. 0 turns it off (start-up recovery still runs).
    maintenance_interval_seconds: float = Field(300.0, ge=0)
    # Resolved holds are kept this long (at least), then pruned; see docs/operations.md. Above
    # the account limit's 31-day window, so a hold due for pruning rarely waits on a live bucket.
    hold_retention_days: int = Field(35, ge=1)
    # Whether a Unified Billing request may set its own price with `cf-aig-custom-cost` (then
    # charged to its credits). Off: the header is for BYOK requests only (a 400 otherwise).
    allow_custom_cost_unified: bool = False
    # SQLite: admit Unified Billing requests against a per-process credit lease in memory and
    # settle them in batches (billing/leases.py); off, every request holds in the database.
    credit_leases: bool = True
    # With leases: how long a settlement batch waits for other requests ending meanwhile to share
    # its commit (only while others are in flight; a lone request is never delayed).
    commit_delay_ms: float = Field(0.5, ge=0, le=20)
    # With leases: how long a settlement the data plane answered before its commit (journaled
    # first) may wait for its batch's commit. 0: every answer waits for its commit.
    settle_interval_ms: float = Field(20.0, ge=0, le=100)


class ProviderSettings(BaseModel):
    model_config = _FROZEN
    base_url: str | None = None  # None only for a provider with no public default (workers-ai)
    api_key: SecretStr | None = None
    zdr_base_url: str | None = None
    zdr_api_key: SecretStr | None = None

    @field_validator("api_key", "zdr_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("base_url", "zdr_base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("expected an http:// or https:// URL")
        return url.rstrip("/") if url else url


class UpstreamSettings(BaseModel):
    model_config = _FROZEN
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # Time to the response headers; a stream that has started may then run as long as it needs.
    first_byte_timeout_seconds: float = Field(300.0, gt=0)
    pool_size: int = Field(1000, ge=1)
    # Image URLs the Unified API must download (Gemini needs the bytes) are refused when they
    # resolve to loopback or private addresses, or use plain http, unless this is true.
    allow_private_image_urls: bool = False
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # Account-chosen destinations (custom providers' base URLs, image URLs) may reach public
    # addresses only, plus these networks (CIDR): for inference servers on the operator's LAN.
    # Operator-configured providers are never checked (netguard.py).
    allowed_private_networks: list[str] = Field(default_factory=list)

    @field_validator("allowed_private_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: "10.0.0.0/8,fd00::/8" or JSON
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
            value = [item for item in value if not isinstance(item, str) or item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            parse_networks(value)  # ValueError names the bad one
            return [item.strip() for item in value]
        return value


class CustomProviderSettings(BaseModel):
    model_config = _FROZEN
    # Account-defined `custom-{slug}` providers must use https unless the operator allows http
    # (for example for inference servers on a private network; which private addresses they
    # may reach is [upstream] allowed_private_networks).
    allow_http: bool = False


class LogSettings(BaseModel):
    model_config = _FROZEN
    # Each logged body (request and response) keeps at most this many bytes; a longer one is
    # cut and flagged (`request_head_complete` / `response_head_complete` false).
    body_max_bytes: int = Field(256 * 1024, ge=0, le=10 * 1024 * 1024)
    # The writer (features/logs.py) inserts a batch every flush_interval_ms, or as soon as
    # batch_size logs are waiting. At most max_pending wait; beyond that the oldest are dropped
    # (and counted) rather than letting memory grow while the database is unreachable.
    batch_size: int = Field(500, ge=1, le=10_000)
    flush_interval_ms: int = Field(200, ge=1, le=60_000)
    max_pending: int = Field(100_000, ge=1)


class SandboxSettings(BaseModel):
    model_config = _FROZEN
    # None = automatic: sandbox mode exactly when no provider has a managed key.
    enabled: bool | None = None
    demo_credits_cents: int = Field(1000, ge=0)


class RedisSettings(BaseModel):
    model_config = _FROZEN
    # Shared by every process when set (response cache, rate limits): "redis://host:6379/0".
    # Unset, each process keeps its own in memory.
    url: str | None = None
    # Prepended to every key tollgate writes, so several gateways (or tests) can share a Redis.
    key_prefix: str = "tollgate:"

    @field_validator("url", mode="before")
    @classmethod
    def _redis_url(cls, url: Any) -> Any:
        if url == "":
            return None
        if url is not None and not re.match(r"^(redis|rediss|unix)://", str(url)):
            raise ValueError("expected a redis://host:port/db, rediss:// or unix:// URL")
        return url


class CacheSettings(BaseModel):
    model_config = _FROZEN
    # The largest response the response cache stores (bigger ones are relayed, not stored).
    max_entry_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    # The in-process cache (used without [redis] url) evicts least recently used entries
    # beyond this many bytes.
    memory_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)


class MetricsSettings(BaseModel):
    model_config = _FROZEN
    # `GET /metrics` (tollgate/metrics.py) answers loopback clients and the operator's admin
    # token; true serves it to anyone who can reach the port.
    public: bool = False


class OtelSettings(BaseModel):
    model_config = _FROZEN
    # Gateways with `otel` exporters send spans (features/otel.py) to collectors their account
    # chose: public addresses, plus [upstream] allowed_private_networks. Spans wait at most
    # flush_interval_ms before a batch is sent; at most max_pending wait (the oldest are dropped
    # and counted beyond that); an export that takes longer than timeout_seconds is abandoned,
    # and its collector skipped for a while.
    flush_interval_ms: int = Field(1000, ge=10, le=60_000)
    max_pending: int = Field(10_000, ge=1)
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class Settings(BaseModel):
    model_config = _FROZEN
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    operator: OperatorSettings = OperatorSettings()
    billing: BillingSettings = BillingSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    sandbox: SandboxSettings = SandboxSettings()
    custom_providers: CustomProviderSettings = CustomProviderSettings()
    logs: LogSettings = LogSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    metrics: MetricsSettings = MetricsSettings()
    otel: OtelSettings = OtelSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    data_dir: Path = Path("./data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The process's own log (tollgate/log_output.py): `text` for people, `json` for one JSON
    # object per line on stderr (with the request id of the request that logged it).
    log_format: Literal["text", "json"] = "text"

    @field_validator("providers", mode="before")
    @classmethod
    def _known_providers(cls, providers: Any) -> Any:
        # Checked before the fields, so a typo in a slug is reported as such.
        unknown = sorted(set(providers or {}) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r}; known: {', '.join(PROVIDERS)}")
        return providers

    @property
    def sandbox_mode(self) -> bool:
        if self.sandbox.enabled is not None:
            return self.sandbox.enabled
        return not any(p.api_key for p in self.providers.values())


def load_settings(
    config_path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the one Settings object from defaults, the TOML file and the environment."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {"providers": _provider_defaults(env)}
    path = _config_path(config_path, env)
    if path is not None:
        _deep_merge(data, _expand_env(_read_toml(path), env))
    _deep_merge(data, _env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, path)) from None


def _config_path(config_path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    chosen = config_path or env.get("TOLLGATE_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist; create it or drop --config")
        return path
    default = Path("tollgate.toml")
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None


def _provider_defaults(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    return {
        row.slug: {"base_url": row.default_base_url, "api_key": env.get(row.key_env) or None}
        for row in PROVIDERS.values()
    }


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env) for v in value]
    if isinstance(value, str):
        expanded = _ENV_REF.sub(lambda m: env.get(m.group(1), ""), value)
        # A reference to an unset variable means "not configured", not "empty string".
        return None if expanded == "" and _ENV_REF.search(value) else expanded
    return value


_ENV_SHORTCUTS = {
    "TOLLGATE_ADMIN_TOKEN": ("operator", "admin_token"),
    "TOLLGATE_DATABASE_URL": ("database", "url"),
}
_ENV_IGNORED = {"TOLLGATE_CONFIG"}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith("TOLLGATE_") or name in _ENV_IGNORED:
            continue
        path = _ENV_SHORTCUTS.get(name) or tuple(
            part.lower() for part in name.removeprefix("TOLLGATE_").split("__")
        )
        if len(path) >= 2 and path[0] == "providers":
            path = (path[0], path[1].replace("_", "-"), *path[2:])
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(name, value)
    return overrides


def _env_value(name: str, value: str) -> Any:
    """A table-valued setting (e.g. billing.price_overrides) is given as a JSON object."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"{name} looks like a JSON object but is not valid JSON: {exc}"
        ) from None


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


_SECRET_SETTINGS = frozenset({"master_key"})


def _explain(exc: ValidationError, path: Path | None) -> str:
    source = f"{path}" if path else "tollgate.toml"
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc) or "(root)"
        env_name = "TOLLGATE_" + "__".join(p.upper().replace("-", "_") for p in loc)
        got = error.get("input")
        shown = (
            ""
            if isinstance(got, dict)
            or error["type"] == "extra_forbidden"
            or (loc and loc[-1] in _SECRET_SETTINGS)  # never echo a secret
            else f" (got {got!r})"
        )
        if error["type"] == "extra_forbidden":
            message = "is not a known setting; check its spelling against docs/configuration.md"
        else:
            message = error["msg"].removeprefix("Value error, ")
        section = ".".join(loc[:-1])
        where = f"[{section}] {loc[-1]}" if section else loc[-1] if loc else key
        lines.append(f"  {key}: {message}{shown}. Set {where} in {source} or {env_name}.")
    return "\n".join(lines)
