"""`GET /metrics`: Prometheus text exposition (format 0.0.4), rendered here without a client
library.

    DataPlane, finally:  metrics.observe(ctx, status)   a handful of dict increments, no I/O
    Upstream:            counts its failed attempts in `metrics.upstream_errors` (a plain dict)
    ResponseCache:       counts its hits and misses; LogWriter its queue, writes and drops
    GET /metrics:        `exposition()` reads all of those, plus the credit totals from the
                         database (one aggregate statement, cached `CREDIT_TOTALS_TTL` seconds)

The request's side is plain ints in dicts keyed by tuples of strings the process already holds
(provider slugs, fixed vocabularies): no lock (everything runs on the event loop), no label
string built per request. Labels never carry an account, a gateway, a token or a prompt; custom
providers (`custom-{slug}`, named by accounts) are counted together as `custom`.

Money is exported in integer nano-dollars (1e-9 USD), never as floats of dollars.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from tollgate.api.auth import OperatorAuth, bearer_value
from tollgate.cache import RefreshingCache
from tollgate.errors import AuthenticationFailed
from tollgate.features.context import RequestContext
from tollgate.providers.registry import PROVIDERS
from tollgate.store import Store
from tollgate.store.metrics import credit_totals

if TYPE_CHECKING:
    from tollgate.features.logs import LogWriter
    from tollgate.features.response_cache import ResponseCache

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, `le` of each bucket (+Inf follows): from a cache hit to a long stream.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CREDIT_TOTALS_TTL = 5.0  # seconds a scrape reuses the database's totals (a scrape storm is cheap)
# PostgreSQL: ledger entries younger than this are re-read at every scrape (store/metrics.py).
POSTGRES_COMMIT_LAG = timedelta(seconds=60)

# The `provider` label: a known slug as is; anything else in a few fixed words.
_PROVIDER_LABELS: dict[str | None, str] = {slug: slug for slug in PROVIDERS} | {None: "none"}
# `status // 100` -> the `status_class` label; no status (nothing was answered) is a 5xx: the
# server answers 500 when a request fails before it starts a response.
_STATUS_CLASSES = ("5xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]


def provider_label(provider: str | None) -> str:
    """The `provider` label of a slug: bounded, and never a name an account chose."""
    known = _PROVIDER_LABELS.get(provider)
    if known is not None:
        return known
    assert provider is not None
    return "custom" if provider.startswith("custom-") else "other"


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status < 600:
        return "5xx"
    return _STATUS_CLASSES[status // 100]


class Histogram:
    """Counts per bucket (not cumulative: `render` adds them up), and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le`).
        self.counts[bisect_left(DURATION_BUCKETS, value)] += 1
        self.total += value


class Metrics:
    """The process's registry. One per `Services`; `observe` is on every request's path."""

    def __init__(self, store: Store) -> None:
        # (provider, status_class, credential_source, cached) -> requests
        self.requests: dict[tuple[str, str, str, bool], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.input_tokens: dict[str, int] = {}
        self.output_tokens: dict[str, int] = {}
        self.billed_nanos: dict[str, int] = {}  # Unified Billing: charged to credits
        self.observed_nanos: dict[str, int] = {}  # the client's or a stored key: priced only
        # (provider slug as sent, kind) -> failed upstream attempts; filled by `Upstream`.
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.credits = _CreditTotals(store)

    def observe(self, ctx: RequestContext, status: int | None) -> None:
        """One data-plane request is over (logged or not): count it, its time, tokens, cost."""
        provider = _PROVIDER_LABELS.get(ctx.provider) or provider_label(ctx.provider)
        source = ctx.credential_source or "none"
        key = (provider, status_class(status), source, ctx.cached)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.durations.get(provider)
        if histogram is None:
            histogram = self.durations[provider] = Histogram()
        histogram.observe(time.monotonic() - ctx.started)
        if ctx.tokens_in:
            self.input_tokens[provider] = self.input_tokens.get(provider, 0) + ctx.tokens_in
        if ctx.tokens_out:
            self.output_tokens[provider] = self.output_tokens.get(provider, 0) + ctx.tokens_out
        cost = ctx.cost_nanos
        if cost:
            costs = self.billed_nanos if source == "unified" else self.observed_nanos
            costs[provider] = costs.get(provider, 0) + cost

    def observe_unrouted(self, status: int) -> None:
        """A request refused before it had a context (a malformed path): counted, not timed."""
        key = ("none", status_class(status), "none", False)
        self.requests[key] = self.requests.get(key, 0) + 1

    async def exposition(self, logs: LogWriter, cache: ResponseCache) -> str:
        """The whole page. Reads the database at most once per `CREDIT_TOTALS_TTL`."""
        families = self.families(logs, cache)
        try:
            held, charged = await self.credits.get()
        except Exception:  # the database may be down: serve the rest, say why in the log
            log.exception("reading the credit totals for /metrics failed")
        else:
            families += credit_families(held, charged)
        return render(families)

    def families(self, logs: LogWriter, cache: ResponseCache) -> list[Family]:
        """Everything but the database's totals, from the counters as they are now."""
        return [
            self._requests(),
            histogram_family("tollgate_request_duration_seconds", self.durations),
            by_provider("tollgate_input_tokens_total", self.input_tokens),
            by_provider("tollgate_output_tokens_total", self.output_tokens),
            by_provider("tollgate_billed_nanos_total", self.billed_nanos),
            by_provider("tollgate_observed_cost_nanos_total", self.observed_nanos),
            self._upstream_errors(),
            single("tollgate_cache_hits_total", "counter", cache.hits),
            single("tollgate_cache_misses_total", "counter", cache.misses),
            single("tollgate_log_queue_depth", "gauge", logs.pending),
            single("tollgate_logs_written_total", "counter", logs.written),
            single("tollgate_logs_dropped_total", "counter", logs.dropped),
        ]

    def _requests(self) -> Family:
        samples: list[Sample] = []
        for (provider, status, source, cached), n in sorted(self.requests.items()):
            labels = (
                ("provider", provider),
                ("status_class", status),
                ("credential_source", source),
                ("cached", "true" if cached else "false"),
            )
            samples.append(("", labels, n))
        return family("tollgate_requests_total", "counter", samples)

    def _upstream_errors(self) -> Family:
        merged: dict[tuple[str, str], int] = {}  # custom providers' slugs become `custom`
        for (provider, kind), n in self.upstream_errors.items():
            key = (provider_label(provider), kind)
            merged[key] = merged.get(key, 0) + n
        samples: list[Sample] = [
            ("", (("provider", p), ("kind", k)), n) for (p, k), n in sorted(merged.items())
        ]
        return family("tollgate_upstream_errors_total", "counter", samples)


# What each metric means: its `# HELP` line, and the list in docs/operations.md.
_NANOS = "in integer nano-dollars (1e-9 USD)"
HELP = {
    "tollgate_requests_total": (
        "Data-plane requests served, by provider, response status class, credential source "
        "(unified, byok, stored; none when no key was chosen: refused before, or most cache "
        "hits) and whether the response cache answered."
    ),
    "tollgate_request_duration_seconds": (
        "Data-plane request duration in seconds, to the response's last byte (a stream's "
        "whole length), by provider."
    ),
    "tollgate_input_tokens_total": "Input tokens from providers' usage, by provider.",
    "tollgate_output_tokens_total": "Output tokens from providers' usage, by provider.",
    "tollgate_billed_nanos_total": (
        f"Unified Billing cost charged to credits, {_NANOS}, by provider."
    ),
    "tollgate_observed_cost_nanos_total": (
        "Catalog price of requests paid with the client's own or a stored provider key (priced, "
        f"not charged), {_NANOS}, by provider."
    ),
    "tollgate_upstream_errors_total": (
        "Failed upstream attempts (each retry and Universal step counts), by provider and kind: "
        "upstream_unreachable, upstream_timeout, upstream_error (the body broke off), "
        "upstream_stream_broken, status_429, status_5xx (the provider's own answer)."
    ),
    "tollgate_cache_hits_total": "Requests answered from the response cache.",
    "tollgate_cache_misses_total": "Response cache lookups that found nothing.",
    "tollgate_log_queue_depth": "Request logs waiting in memory for the log writer.",
    "tollgate_logs_written_total": "Request logs written to the database.",
    "tollgate_logs_dropped_total": (
        "Request logs dropped: refused by a gateway's log_management (STOP_INSERTING), or the "
        "oldest shed beyond logs.max_pending while the database was unreachable."
    ),
    "tollgate_credits_held_nanos": (
        f"Credits held by requests in flight (open holds, every account), {_NANOS}. From the "
        f"database, at most {2 * CREDIT_TOTALS_TTL:g} s old."
    ),
    "tollgate_credits_charged_nanos": (
        f"Usage charged to credits since the ledger began (every account and process), {_NANOS}; "
        f"only grows. From the database, at most {2 * CREDIT_TOTALS_TTL:g} s old."
    ),
}


Sample = tuple[str, Labels, int | float]  # (name suffix, labels, value)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    samples: list[Sample]


def family(name: str, kind: Kind, samples: list[Sample]) -> Family:
    return Family(name, kind, HELP[name], samples)


def single(name: str, kind: Kind, value: int) -> Family:
    """A family of one sample without labels."""
    return family(name, kind, [("", (), value)])


def by_provider(name: str, values: Mapping[str, int]) -> Family:
    samples: list[Sample] = [("", (("provider", p),), n) for p, n in sorted(values.items())]
    return family(name, "counter", samples)


def histogram_family(name: str, histograms: Mapping[str, Histogram]) -> Family:
    samples: list[Sample] = []
    bounds = [_number(b) for b in DURATION_BUCKETS] + ["+Inf"]
    for provider, histogram in sorted(histograms.items()):
        cumulative = 0
        for bound, count in zip(bounds, histogram.counts, strict=True):
            cumulative += count
            samples.append(("_bucket", (("provider", provider), ("le", bound)), cumulative))
        samples.append(("_sum", (("provider", provider),), histogram.total))
        samples.append(("_count", (("provider", provider),), cumulative))
    return family(name, "histogram", samples)


def credit_families(held: int, charged: int) -> list[Family]:
    return [
        single("tollgate_credits_held_nanos", "gauge", held),
        single("tollgate_credits_charged_nanos", "gauge", charged),
    ]


# --- the text format ----------------------------------------------------------------------------


def render(families: Iterable[Family]) -> str:
    """Prometheus text exposition 0.0.4: `# HELP`, `# TYPE`, then one line per sample."""
    lines: list[str] = []
    for each in families:
        lines.append(f"# HELP {each.name} {escape_help(each.help)}")
        lines.append(f"# TYPE {each.name} {each.kind}")
        for suffix, labels, value in each.samples:
            if labels:
                text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
                lines.append(f"{each.name}{suffix}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{each.name}{suffix} {_number(value)}")
    lines.append("")
    return "\n".join(lines)


def escape_label(value: str) -> str:
    """A label value: backslash, double quote and line feed are escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed are escaped (a double quote is not)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)  # exact, however large (nano-dollars)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# --- the database's totals ----------------------------------------------------------------------


class _CreditTotals:
    """Credits held now, and usage charged so far: a running total, read incrementally
    (`tollgate.store.metrics` explains how), at most once per `CREDIT_TOTALS_TTL` (single flight:
    concurrent scrapes share one read)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._after = 0  # ledger entries up to this seq are in `_charged`
        self._charged = 0
        self._cache: RefreshingCache[str, tuple[int, int]] = RefreshingCache(
            self._load, ttl=CREDIT_TOTALS_TTL, max_entries=1
        )

    async def get(self) -> tuple[int, int]:
        """(held nano-dollars, charged nano-dollars)."""
        return await self._cache.get("totals")

    async def _load(self, _key: str) -> tuple[int, int]:
        lag = None if self._store.dialect == "sqlite" else datetime.now(UTC) - POSTGRES_COMMIT_LAG
        totals = await credit_totals(self._store, after=self._after, settled_before=lag)
        charged = self._charged + totals.recent_nanos
        self._charged += totals.settled_nanos
        self._after = totals.edge_seq
        return totals.held_nanos, charged


# --- who may scrape -----------------------------------------------------------------------------


async def authorize_scrape(
    *,
    public: bool,
    operator: OperatorAuth,
    client_host: str | None,
    headers: Mapping[str, str],
) -> None:
    """Anyone when `[metrics] public`; else a loopback client that did not come through a proxy,
    or the operator's admin token. Raises 401 otherwise."""
    if public or (is_loopback(client_host) and not any(h in headers for h in _FORWARDING_HEADERS)):
        return
    token = bearer_value(headers.get("authorization"))
    if token is None:
        raise AuthenticationFailed(
            "/metrics is served to loopback clients, or with the operator's admin token: send "
            "'Authorization: Bearer <admin token>', or set [metrics] public = true.",
            code="missing_token",
        )
    await operator.check(token)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False  # a Unix socket: a proxy may stand in front of it
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
