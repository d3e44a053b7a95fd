"""The configuration reference, generated from the settings model so it cannot drift.

`docs/configuration.md` holds a table of every key between two markers; `render_keys_table()`
builds it from `tollgate.settings.Settings`: each key, its environment variable, its default and
what values it allows come from the model itself, and only the meaning is written here, in
`MEANINGS`. A test (`tests/unit/test_settings_reference.py`) fails when a setting has no meaning,
a meaning names no setting, or the file's table differs from the rendering; `make docs` rewrites
the table.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tollgate.providers.registry import PROVIDERS
from tollgate.settings import ProviderSettings, Settings

BEGIN = "<!-- BEGIN GENERATED: settings keys (make docs) -->"
END = "<!-- END GENERATED: settings keys -->"
PROVIDER_KEY = "providers.<slug>"

# Defaults whose meaning a value cannot show (None standing for "decided at start-up").
SHOWN_DEFAULTS = {
    "server.public_url": "(the request's own URL)",
    "billing.stripe_api_base": "Stripe's",
    "sandbox.enabled": "automatic",
    "providers.<slug>.base_url": "the provider's public API (below)",
    "providers.<slug>.api_key": "from the provider's key variable (below)",
    "data_dir": "`./data`",
}

# What each key means, in the words of the reference (Markdown).
MEANINGS: dict[str, str] = {
    "server.host": "address to listen on",
    "server.port": "port to listen on",
    "server.max_body_bytes": "larger request bodies get 413 before they are read",
    "server.public_url": "base URL the gateway prints and returns in `url/{provider}`",
    "server.max_header_count": (
        "requests with more headers get 431 in the endpoint's error format; past twice this, "
        "the server closes the connection before the application runs"
    ),
    "server.max_header_bytes": (
        "requests whose header names and values add up to more get 431 in the endpoint's "
        "error format; past twice this, the server closes the connection"
    ),
    "server.max_json_depth": (
        "JSON request bodies nested deeper (the top-level object is level 1) get 400 "
        "`json_too_deep`"
    ),
    "server.max_messages": (
        "chat requests with more `messages` (or Gemini `contents`) get 400 `too_many_messages`"
    ),
    "server.header_timeout_seconds": (
        "a request's headers must arrive within this, from the connection's start or the "
        "request's first byte; otherwise the connection is closed (408 if part arrived)"
    ),
    "server.body_timeout_seconds": (
        "a request's whole body must arrive within this (slowly trickling clients get 408 "
        "and the connection is closed)"
    ),
    "server.keep_alive_timeout_seconds": (
        "idle kept-alive connections are closed after this; behind a load balancer, set it "
        "above the balancer's idle timeout"
    ),
    "server.workers": (
        "gateway processes `tollgate serve` runs on its port (`--workers` overrides it); "
        "each has its own event loop and core "
        "(see [operations.md](operations.md#multiple-processes))"
    ),
    "server.shutdown_grace_seconds": (
        "on SIGTERM, requests and streams in flight get this long to finish before their "
        "connections are closed; their charges and logs are written either way"
    ),
    "database.url": "`sqlite:///path` or `postgresql://user@host/db`",
    "database.wal_sync_interval_seconds": (
        "SQLite: how often the WAL of the ledger's holds and settlements is synced to disk. "
        "A killed process loses nothing; an OS crash or power loss can lose at most this "
        "many seconds of them (see [operations.md](operations.md#databases))"
    ),
    "database.cache_events_poll_seconds": (
        "how often each gateway process applies the changes other processes and the CLI made "
        "to what it caches (a revoked token, a gateway's settings, ...); such a change takes "
        "effect everywhere within about this long. 0 turns it off: other processes then see "
        "changes only when their cache entries expire, within 10 s (see "
        "[operations.md](operations.md#tokens-and-caches))"
    ),
    "database.max_connections": (
        "PostgreSQL: the most connections one gateway process opens (half stay open, the rest "
        "are opened under load and closed after). N processes need N times this within the "
        "server's `max_connections` (see [operations.md](operations.md#sizing))"
    ),
    "operator.admin_token": (
        "the operator's token for `/admin/v1`; in sandbox mode one is generated if unset"
    ),
    "operator.master_key": (
        "encrypts stored provider keys (BYOK `provider_configs`) at rest: 32 random bytes, base64"
        " (`openssl rand -base64 32`). Unset, storing a key is a 503 naming this setting. Keep it"
        " safe and stable: keys stored under another master key cannot be used (see [Stored keys "
        "and ZDR](#stored-keys-and-zero-data-retention))"
    ),
    "billing.payment_provider": (
        "how credit purchases are charged (`sandbox`: test cards, no money moves)"
    ),
    "billing.purchase_fee_percent": (
        "fee added to credit purchases, 0–100 (the card is charged amount + fee; the credit is "
        "the amount)"
    ),
    "billing.markup_percent": "added exactly to every catalog price",
    "billing.price_overrides": (
        "per-model prices as decimal strings: token prices (`input`, `output`, `cached_input`, "
        "`cache_write`, `cache_write_1h`, `reasoning`, `citation`) in USD per million tokens; "
        "`search_queries_per_1k` in USD per 1,000 searches; `request_fee_per_1k` (and "
        "`pro_search_request_fee_per_1k`) as `{low, medium, high}` in USD per 1,000 requests; "
        "`off_peak_input`, `off_peak_output`, `off_peak_cached_input` with `peak_hours_utc` "
        '(`{days: "mon-fri" or "mon-sun", windows: ["01:00-04:00"]}`). Replaces fields of a '
        "listed model (`null` removes an optional one) or adds one (then `provider`, "
        "`context_window`, `max_output_tokens`, `input`, `output` are required). In the "
        "environment, give it as a JSON object"
    ),
    "billing.stripe_secret_key": 'required when `payment_provider = "stripe"`',
    "billing.stripe_webhook_secret": "verifies `POST /stripe/webhook` deliveries",
    "billing.stripe_api_base": "a Stripe-compatible API base (tests, proxies)",
    "billing.hold_ttl_seconds": (
        "how long a request's hold lives before crash recovery may resolve it as abandoned (see "
        "[operations.md](operations.md#unified-billing)); the process extends the holds of its "
        "requests in flight every third of it, so a longer stream keeps its hold; a shorter TTL "
        "resolves a crashed process's holds sooner on PostgreSQL"
    ),
    "billing.maintenance_interval_seconds": (
        "how often the background maintenance runs: recover expired holds, prune old holds and "
        "spend buckets; `0` turns it off (start-up recovery still runs)"
    ),
    "billing.hold_retention_days": (
        "resolved holds are kept at least this long (after both their resolution and their "
        "expiry), then pruned"
    ),
    "logs.body_max_bytes": (
        "each logged request and response body keeps at most this many bytes (0 to 10 MiB); a "
        "longer one is cut and its log says so (`request_head_complete` / "
        "`response_head_complete` false)"
    ),
    "logs.batch_size": (
        "the log writer inserts this many logs per statement, and starts a write as soon as this "
        "many wait (1–10000)"
    ),
    "logs.flush_interval_ms": (
        "the log writer writes what waits at least this often (1–60000 ms); a graceful shutdown "
        "writes everything, a killed process loses at most this interval's logs"
    ),
    "logs.max_pending": (
        "logs waiting in memory while the database is unreachable; beyond it the oldest are "
        "dropped (and logged as an error)"
    ),
    "billing.allow_custom_cost_unified": (
        "let Unified Billing requests set their own price with `cf-aig-custom-cost` (charged to "
        "their credits; the model must still be in the catalog). Off, the header is accepted on "
        "BYOK requests only and is a 400 on Unified Billing "
        "([api.md](api.md#metadata-event-ids-and-custom-costs))"
    ),
    "billing.credit_leases": (
        "SQLite: admit Unified Billing requests (those no spending limit counts) against a credit "
        "lease this process reserves from the account, in memory, and write their settlements in "
        "batches; a crash is recovered from the process's journal ([billing.md](billing.md)). Off: "
        "each request holds and settles in the database. PostgreSQL always holds in the database"
    ),
    "billing.commit_delay_ms": (
        "With credit leases: how long a batch of settlements waits before its commit for other "
        "requests ending meanwhile to join it (group commit, like PostgreSQL's `commit_delay`). "
        "Only while at least two other requests are in flight: a lone request is never delayed. "
        "0 writes each loop iteration's settlements at once ([billing.md](billing.md))"
    ),
    "billing.settle_interval_ms": (
        "With credit leases: the data plane answers a request once its settlement is journaled "
        "and commits it with the others issued within this many milliseconds (one commit for "
        "many requests). A crash in between loses nothing: recovery writes the journaled charge. "
        "Readers in the same process see it at once; other processes within this interval. "
        "0: every answer waits for its own commit ([billing.md](billing.md))"
    ),
    "upstream.connect_timeout_seconds": "TCP connect timeout to a provider",
    "upstream.first_byte_timeout_seconds": (
        "time allowed until a provider's response headers (504 after); a started stream may run "
        "on; a request may set its own with `cf-aig-request-timeout` "
        "([api.md](api.md#retries-timeouts-and-the-universal-endpoint-fallbacks))"
    ),
    "upstream.pool_size": "maximum open upstream connections per process",
    "upstream.allow_private_image_urls": (
        "let the Unified API fetch image URLs over plain http or on private/loopback addresses "
        "(off: https to public addresses only)"
    ),
    "upstream.max_image_bytes": (
        "largest image the Unified API downloads for a provider that needs the bytes (Gemini)"
    ),
    "upstream.allowed_private_networks": (
        'networks (CIDR, e.g. `["10.0.0.0/8"]`; in the environment comma-separated) that '
        "account-chosen upstreams may reach besides public addresses: custom providers' base "
        "URLs and image URLs. Loopback, private, link-local (cloud metadata), unique-local, "
        "unspecified and multicast addresses are refused otherwise, also when a host name "
        "resolves to one. Operator-configured providers are never checked (see "
        "[operations.md](operations.md#request-limits-and-ssrf))"
    ),
    "custom_providers.allow_http": (
        "let accounts register `custom-{slug}` providers with `http://` base URLs (which "
        "private addresses they may reach is `upstream.allowed_private_networks`)"
    ),
    "redis.url": (
        "`redis://host:6379/0` (or `rediss://`, `unix://`): the response cache and rate limits "
        "are shared by every process through it; unset, each process keeps its own (see [Response"
        " cache and rate limits](#response-cache-and-rate-limits))"
    ),
    "redis.key_prefix": "prepended to every key tollgate writes in Redis",
    "cache.max_entry_bytes": "larger responses are relayed but not cached",
    "cache.memory_max_bytes": (
        "without Redis: the in-process cache evicts least recently used entries beyond this"
    ),
    "metrics.public": (
        "serve `GET /metrics` to anyone who can reach the port; off, only to loopback clients "
        "that did not come through a proxy, or with the operator's admin token (see "
        "[operations.md](operations.md#metrics))"
    ),
    "otel.flush_interval_ms": (
        "gateways' OpenTelemetry spans wait at most this long before they are sent in a batch "
        "(see [operations.md](operations.md#logs-and-tracing))"
    ),
    "otel.max_pending": (
        "spans waiting to be sent, at most; beyond it the oldest are dropped (and counted)"
    ),
    "otel.timeout_seconds": (
        "an export that takes longer is abandoned and its collector skipped for 30 s"
    ),
    "sandbox.enabled": (
        "`true`/`false`; automatic = sandbox exactly when no provider has an `api_key`"
    ),
    "sandbox.demo_credits_cents": "sandbox credits granted to the demo account at first start",
    "data_dir": "where the SQLite database (by default) and sandbox credentials live",
    "log_level": "how much the gateway writes to its own log",
    "log_format": (
        "`text` for people; `json`: one JSON object per line on stderr (`ts`, `level`, "
        "`logger`, `message`, `request_id` inside a request, ...; see "
        "[operations.md](operations.md#logs-and-tracing))"
    ),
    "providers.<slug>.base_url": "where requests for that provider go",
    "providers.<slug>.api_key": "the operator's **managed key** for Unified Billing",
    "providers.<slug>.zdr_base_url": (
        "the operator's Zero Data Retention base URL for the provider: Unified Billing requests "
        "with ZDR on go there. Either `zdr_*` setting may be set alone; the other is then the "
        "standard one (see [Stored keys and ZDR](#stored-keys-and-zero-data-retention))"
    ),
    "providers.<slug>.zdr_api_key": (
        "the key sent with Unified Billing requests that have ZDR on (e.g. a key of a ZDR-enabled"
        " project); unset, the standard `api_key` is used"
    ),
}


def _type_choices(annotation: Any) -> list[str]:
    """The values a `Literal` field allows (also inside `X | None`)."""
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    return [c for arg in get_args(annotation) for c in _type_choices(arg)]


def _allowed(field: FieldInfo) -> str:
    """What values the model accepts, from its type and its bounds."""
    choices = _type_choices(field.annotation)
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    bounds = []
    for rule in field.metadata:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(rule, name, None)
            if value is not None:
                bounds.append(f"{sign} {_number(value)}")
    return ", ".join(bounds)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(key: str, field: FieldInfo) -> str:
    if key in SHOWN_DEFAULTS:
        return SHOWN_DEFAULTS[key]
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float | Decimal):
        shown = f"`{_number(value)}`"
        if key.endswith("_bytes") and isinstance(value, int) and value % 1024 == 0:
            size = f"{value // 1024**2} MiB" if value % 1024**2 == 0 else f"{value // 1024} KiB"
            shown += f" ({size})"
        elif key.endswith("_seconds") and value >= 60 and value % 60 == 0:
            shown += f" ({int(value) // 60} min)"
        return shown
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def environment_name(key: str) -> str:
    """The variable that sets `key` (`server.port` -> `TOLLGATE_SERVER__PORT`)."""
    parts = key.replace(PROVIDER_KEY, "providers.<SLUG>").split(".")
    return "TOLLGATE_" + "__".join(part.upper() for part in parts)


def settings_fields() -> list[tuple[str, FieldInfo]]:
    """Every key of the settings, dotted, in the model's order (providers' keys once, under
    `providers.<slug>`)."""
    keys: list[tuple[str, FieldInfo]] = []
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if name == "providers":
            keys += [(f"{PROVIDER_KEY}.{n}", f) for n, f in ProviderSettings.model_fields.items()]
        elif isinstance(section, type) and issubclass(section, BaseModel):
            keys += [(f"{name}.{n}", f) for n, f in section.model_fields.items()]
        else:
            keys.append((name, field))
    return keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_keys_table() -> str:
    """The Markdown table of every key: key and variable, default, allowed values, meaning."""
    lines = [
        "| key (environment variable) | default | allowed | meaning |",
        "|---|---|---|---|",
    ]
    for key, field in settings_fields():
        meaning = MEANINGS.get(key, "")
        name = f"`{key}`<br>`{environment_name(key)}`"
        lines.append(
            f"| {name} | {_cell(_default(key, field))} | {_cell(_allowed(field))} "
            f"| {_cell(meaning)} |"
        )
    return "\n".join(lines)


def render_providers_table() -> str:
    """Every provider slug with its default base URL and the variable its managed key is read
    from (the provider registry)."""
    lines = ["| slug | default base URL | key variable |", "|---|---|---|"]
    for row in PROVIDERS.values():
        base = f"`{row.default_base_url}`" if row.default_base_url else "(none: set it)"
        lines.append(f"| `{row.slug}` | {base} | `{row.key_env}` |")
    return "\n".join(lines)


def render() -> str:
    """What goes between the markers: the keys, then the providers."""
    return (
        f"{render_keys_table()}\n\n"
        "Provider slugs, and the environment variable each reads its managed key from by "
        f"default:\n\n{render_providers_table()}"
    )


def rewrite(path: Path) -> bool:
    """Replace the generated table in `path`; True when the file changed."""
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    updated = f"{text[:start]}\n{render()}\n{text[end:]}"
    if updated == text:
        return False
    path.write_text(updated)
    return True


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    print(f"{target}: {'rewritten' if rewrite(target) else 'already up to date'}")
