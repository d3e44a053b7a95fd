"""The `/metrics` registry and its text format: rendering, cumulative histogram buckets, label
escaping, what one request adds, who may scrape, the upstream's failure counts, and the credit
totals read from the database (on SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import prometheus
from tollgate.api.auth import OperatorAuth
from tollgate.billing.ledger import Ledger
from tollgate.errors import AuthenticationFailed, UpstreamUnavailable
from tollgate.features.context import RequestContext
from tollgate.features.logs import LogWriter
from tollgate.features.response_cache import ResponseCache, build_response_cache
from tollgate.gateway_cache import GatewayCache
from tollgate.metrics import (
    DURATION_BUCKETS,
    HELP,
    Family,
    Histogram,
    Metrics,
    authorize_scrape,
    escape_help,
    escape_label,
    histogram_family,
    is_loopback,
    render,
)
from tollgate.settings import LogSettings, UpstreamSettings
from tollgate.sim import SimServer
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.metrics import credit_totals
from tollgate.store.migrate import migrate
from tollgate.upstream import Upstream, UpstreamStreamBroken

ADMIN = "the-operators-admin-token"
DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store that is never migrated: the request-side registry does not touch it."""
    store = Store(f"sqlite:///{tmp_path / 'unused.db'}")
    yield store
    await store.close()


def context(
    provider: str | None = "openai",
    *,
    source: Any = "unified",
    tokens: tuple[int, int] | None = (10, 5),
    cost: int | None = 1_234,
    cached: bool = False,
    seconds_ago: float = 0.0,
) -> RequestContext:
    ctx = RequestContext("a" * 32, "default")
    ctx.provider, ctx.credential_source, ctx.cached = provider, source, cached
    if tokens is not None:
        ctx.tokens_in, ctx.tokens_out = tokens
    ctx.cost_nanos = cost
    ctx.started -= seconds_ago
    return ctx


def components(store: Store) -> tuple[LogWriter, ResponseCache]:
    logs = LogWriter(store, GatewayCache(store), LogSettings())
    cache = build_response_cache(None, "t:", max_entry_bytes=1024, memory_max_bytes=4096)
    return logs, cache


# --- the text format ------------------------------------------------------------------------------


def test_a_family_renders_help_type_and_one_line_per_sample() -> None:
    family = Family(
        "tollgate_example_total",
        "counter",
        "Things, in integer nano-dollars.",
        [("", (("provider", "openai"),), 3), ("", (("provider", "groq"),), 12_345_678_901_234)],
    )
    assert render([family]) == (
        "# HELP tollgate_example_total Things, in integer nano-dollars.\n"
        "# TYPE tollgate_example_total counter\n"
        'tollgate_example_total{provider="openai"} 3\n'
        'tollgate_example_total{provider="groq"} 12345678901234\n'
    )


def test_a_sample_without_labels_has_no_braces_and_floats_keep_their_form() -> None:
    families = [
        Family("g", "gauge", "h", [("", (), 0)]),
        Family("f", "gauge", "h", [("", (), 0.25), ("_x", (), math.inf)]),
    ]
    assert render(families).splitlines()[2::3] == ["g 0", "f 0.25"]
    assert render(families).splitlines()[-1] == "f_x +Inf"


def test_label_values_escape_backslash_quote_and_line_feed() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help('say "hi"\\\n') == 'say "hi"\\\\\\n'
    weird = 'C:\\path "quoted"\nnext'
    text = render([Family("t", "counter", "line one\nline two", [("", (("v", weird),), 1)])])
    assert '{v="C:\\\\path \\"quoted\\"\\nnext"}' in text
    assert len(text.splitlines()) == 3  # nothing broke a line
    parsed = prometheus.parse(text)
    assert parsed.value("t", v=weird) == 1  # the round trip gives the value back
    assert parsed.helps["t"] == "line one\\nline two"


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count() -> None:
    histogram = Histogram()
    values = [0.001, 0.005, 0.0051, 0.3, 0.3, 59.9, 60.0, 100.0]
    for value in values:
        histogram.observe(value)
    name = "tollgate_request_duration_seconds"
    parsed = prometheus.parse(render([histogram_family(name, {"x": histogram})]))
    # in the order rendered: every bound, then +Inf, each counting all values up to it
    series = [s for (n, ls), s in parsed.samples.items() if n == f"{name}_bucket"]
    bounds = [float(labels["le"]) for labels in parsed.series(f"{name}_bucket")]
    assert bounds == [*DURATION_BUCKETS, math.inf]
    assert series == sorted(series)  # cumulative: never decreasing
    bucket = dict(zip(bounds, series, strict=True))
    assert bucket[0.005] == 2  # a value equal to a bound is in that bound's bucket
    assert bucket[0.01] == 3
    assert bucket[0.5] == 5
    assert bucket[60.0] == 7
    assert bucket[math.inf] == len(values) == parsed.value(f"{name}_count", provider="x")
    assert parsed.value(f"{name}_sum", provider="x") == pytest.approx(sum(values))
    assert parsed.types[name] == "histogram"


# --- what a request adds --------------------------------------------------------------------------


async def test_one_request_counts_itself_its_time_tokens_and_cost(store: Store) -> None:
    metrics = Metrics(store)
    metrics.observe(context(seconds_ago=0.2), 200)
    metrics.observe(context(source="byok", cost=700, tokens=(3, 4)), 200)
    metrics.observe(context(source=None, tokens=None, cost=0, cached=True), 200)
    metrics.observe(context(source="stored", cost=None, tokens=None), 429)

    scrape = prometheus.parse(render(metrics.families(*components(store))))
    requests = "tollgate_requests_total"
    base = {"provider": "openai", "cached": "false"}
    assert scrape.value(requests, **base, status_class="2xx", credential_source="unified") == 1
    assert scrape.value(requests, **base, status_class="2xx", credential_source="byok") == 1
    assert scrape.value(requests, **base, status_class="4xx", credential_source="stored") == 1
    hit = {"provider": "openai", "status_class": "2xx", "credential_source": "none"}
    assert scrape.value(requests, **hit, cached="true") == 1
    assert scrape.value("tollgate_input_tokens_total", provider="openai") == 13
    assert scrape.value("tollgate_output_tokens_total", provider="openai") == 9
    assert scrape.value("tollgate_billed_nanos_total", provider="openai") == 1_234
    assert scrape.value("tollgate_observed_cost_nanos_total", provider="openai") == 700
    assert scrape.value("tollgate_request_duration_seconds_count", provider="openai") == 4
    assert (
        scrape.value("tollgate_request_duration_seconds_bucket", provider="openai", le="0.1") == 3
    )
    assert scrape.value("tollgate_request_duration_seconds_sum", provider="openai") >= 0.2


async def test_labels_stay_bounded_and_anonymous(store: Store) -> None:
    """Custom providers are named by accounts: they are counted together; no status is 5xx."""
    metrics = Metrics(store)
    metrics.observe(context("custom-acme-internal"), 200)
    metrics.observe(context("custom-other-corp"), 502)
    metrics.observe(context(None, source=None, tokens=None, cost=None), None)
    metrics.observe_unrouted(404)
    metrics.upstream_errors[("custom-acme-internal", "upstream_timeout")] = 2
    metrics.upstream_errors[("custom-b", "upstream_timeout")] = 1

    scrape = prometheus.parse(render(metrics.families(*components(store))))
    assert scrape.total("tollgate_requests_total", provider="custom") == 2
    assert scrape.total("tollgate_requests_total", provider="none", status_class="5xx") == 1
    assert scrape.total("tollgate_requests_total", provider="none", status_class="4xx") == 1
    assert (
        scrape.value("tollgate_upstream_errors_total", provider="custom", kind="upstream_timeout")
        == 3
    )
    every_value = {v for (_, labels) in scrape.samples for _, v in labels}
    assert not any("acme" in v or "a" * 32 in v for v in every_value)


async def test_every_family_has_help_and_type_even_before_any_request(store: Store) -> None:
    logs, cache = components(store)
    scrape = prometheus.parse(render(Metrics(store).families(logs, cache)))
    assert set(scrape.types) == set(HELP) - {
        "tollgate_credits_held_nanos",
        "tollgate_credits_charged_nanos",
    }
    assert set(scrape.helps) == set(scrape.types)
    assert scrape.value("tollgate_log_queue_depth") == 0
    assert scrape.types["tollgate_log_queue_depth"] == "gauge"
    assert all("nano-dollars" in HELP[n] for n in HELP if "nanos" in n)


async def test_the_reference_parser_reads_the_page_the_same_way(store: Store) -> None:
    """Cross-checked with prometheus_client's parser when it is installed (tollgate does not
    use it: the page is rendered by tollgate.metrics)."""
    parser = pytest.importorskip("prometheus_client.parser")
    metrics = Metrics(store)
    metrics.observe(context(cost=123_456_789_012), 200)
    metrics.observe(context("custom-x", source="byok"), 503)
    page = render(metrics.families(*components(store)))

    ours = prometheus.parse(page).samples
    theirs = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parser.text_string_to_metric_families(page)
        for sample in family.samples
    }
    assert theirs.keys() == ours.keys()
    assert all(theirs[key] == pytest.approx(value) for key, value in ours.items())


def test_the_operations_guide_lists_every_metric() -> None:
    section = DOCS.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(tollgate_[a-z_]+)`", section))
    assert listed == set(HELP)


def test_observing_a_request_costs_a_few_microseconds(store: Store) -> None:
    """The hot path's share: measured, with a generous bound for slow CI machines."""
    metrics = Metrics(store)
    ctx = context()
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.observe(ctx, 200)
    per_request = (time.perf_counter() - started) / rounds
    assert per_request < 20e-6


# --- who may scrape -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("203.0.113.7", False),
        ("::ffff:203.0.113.7", False),
        ("testclient", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_addresses(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def scrape_as(
    store: Store, host: str | None, public: bool = False, **headers: str
) -> AuthenticationFailed | None:
    try:
        await authorize_scrape(
            public=public, operator=OperatorAuth(store, ADMIN), client_host=host, headers=headers
        )
    except AuthenticationFailed as refused:
        return refused
    return None


async def test_loopback_may_scrape_others_need_the_admin_token(store: Store) -> None:
    assert await scrape_as(store, "127.0.0.1") is None
    refused = await scrape_as(store, "203.0.113.7")
    assert refused is not None and refused.status == 401 and refused.code == "missing_token"
    assert "[metrics] public" in refused.message
    wrong = await scrape_as(store, "203.0.113.7", authorization="Bearer tg_not-the-admin")
    assert wrong is not None and wrong.code == "invalid_token"
    assert await scrape_as(store, "203.0.113.7", authorization=f"Bearer {ADMIN}") is None
    assert await scrape_as(store, "203.0.113.7", public=True) is None


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
async def test_a_request_through_a_local_proxy_is_not_a_loopback_client(
    store: Store, header: str
) -> None:
    assert await scrape_as(store, "127.0.0.1", **{header: "203.0.113.7"}) is not None
    with_token = {header: "203.0.113.7", "authorization": f"Bearer {ADMIN}"}
    assert await scrape_as(store, "127.0.0.1", **with_token) is None


# --- the upstream's failure counts ----------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(UpstreamSettings(first_byte_timeout_seconds=5))
    await client.start()
    yield client
    await client.close()


def chat(sim: SimServer, stream: bool = False, **headers: str) -> dict[str, Any]:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]'
    return {
        "provider": "openai",
        "method": "POST",
        "url": f"{sim.base_url}/openai/v1/chat/completions",
        "headers": [
            ("authorization", "Bearer k"),
            ("content-type", "application/json"),
            *headers.items(),
        ],
        "body": body + (b',"stream":true}' if stream else b"}"),
    }


async def test_upstream_counts_each_kind_of_failed_attempt(
    sim: SimServer, upstream: Upstream
) -> None:
    for status in ("503", "500", "429", "400"):
        (await upstream.send(**chat(sim, **{"x-sim-error": status}))).close()
    whole = await upstream.send(**chat(sim, **{"x-sim-drop-after": "1"}))
    with pytest.raises(UpstreamUnavailable):
        await whole.read()
    stream = await upstream.send(**chat(sim, stream=True, **{"x-sim-drop-after": "2"}))
    with pytest.raises(UpstreamStreamBroken):
        async for _ in stream.chunks():
            pass
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UpstreamUnavailable):
        await upstream.send(
            **{**chat(sim), "url": f"http://127.0.0.1:{port}/x", "provider": "groq"}
        )

    assert upstream.failures == {
        ("openai", "status_5xx"): 2,
        ("openai", "status_429"): 1,
        ("openai", "upstream_error"): 1,
        ("openai", "upstream_stream_broken"): 1,
        ("groq", "upstream_unreachable"): 1,
    }


async def test_a_stream_the_gateway_closes_for_a_departed_client_is_no_upstream_failure(
    sim: SimServer, upstream: Upstream
) -> None:
    slow = {"x-sim-chunks": "5", "x-sim-chunk-delay-ms": "200"}
    response = await upstream.send(**chat(sim, stream=True, **slow))
    with pytest.raises(UpstreamStreamBroken):  # what relay sees after close_on_disconnect
        async for _ in response.chunks():
            response.close()
    assert upstream.failures == {}


# --- the credit totals ----------------------------------------------------------------------------


@pytest.fixture
async def books(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    yield store
    await store.close()


async def charge(ledger: Ledger, account_id: str, nanos: int, request_id: str) -> None:
    hold = await ledger.hold(account_id, request_id, nanos + 50)
    await ledger.settle(hold, nanos)


async def test_credit_totals_sum_holds_and_usage_reading_only_new_entries(books: Store) -> None:
    ledger = Ledger(books)
    accounts = [(await account_repo.create_account(books, f"a{n}")).id for n in range(2)]
    for account_id in accounts:
        await ledger_repo.append_entry(books, account_id, kind="grant", amount_nanos=10_000)
    await charge(ledger, accounts[0], 300, "r1")
    await charge(ledger, accounts[1], 200, "r2")
    open_hold = await ledger.hold(accounts[1], "r3", 1_000)

    first = await credit_totals(books, after=0, settled_before=None)
    assert (first.held_nanos, first.settled_nanos, first.recent_nanos) == (1_000, 500, 500)
    await ledger.settle(open_hold, 400)
    second = await credit_totals(books, after=first.edge_seq, settled_before=None)
    assert (second.held_nanos, second.settled_nanos, second.recent_nanos) == (0, 400, 400)
    assert second.edge_seq > first.edge_seq
    idle = await credit_totals(books, after=second.edge_seq, settled_before=None)
    assert (idle.edge_seq, idle.settled_nanos, idle.recent_nanos) == (second.edge_seq, 0, 0)


async def test_entries_younger_than_the_lag_are_counted_but_read_again(books: Store) -> None:
    """PostgreSQL may commit a smaller seq after a larger one: only entries older than the lag
    move the watermark; younger ones count in `recent`, so nothing is missed or counted twice."""
    ledger = Ledger(books)
    account_id = (await account_repo.create_account(books, "lag")).id
    await ledger_repo.append_entry(books, account_id, kind="grant", amount_nanos=10_000)
    await charge(ledger, account_id, 300, "r1")
    past = datetime.now(UTC) - timedelta(hours=1)

    young = await credit_totals(books, after=0, settled_before=past)
    assert (young.edge_seq, young.settled_nanos, young.recent_nanos) == (0, 0, 300)
    later = datetime.now(UTC) + timedelta(seconds=1)
    old = await credit_totals(books, after=young.edge_seq, settled_before=later)
    assert (old.settled_nanos, old.recent_nanos) == (300, 300) and old.edge_seq > 0


async def test_the_registry_keeps_a_running_total_and_reads_at_most_once_per_ttl(
    books: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tollgate.metrics as metrics_module

    reads: list[int] = []
    real = metrics_module.credit_totals

    async def counted(store: Store, **kwargs: Any) -> Any:
        reads.append(kwargs["after"])
        return await real(store, **kwargs)

    monkeypatch.setattr(metrics_module, "credit_totals", counted)
    ledger = Ledger(books)
    account_id = (await account_repo.create_account(books, "ttl")).id
    await ledger_repo.append_entry(books, account_id, kind="grant", amount_nanos=10_000)
    await charge(ledger, account_id, 300, "r1")
    metrics = Metrics(books)

    assert await metrics.credits.get() == (0, 300)
    await charge(ledger, account_id, 200, "r2")
    assert await metrics.credits.get() == (0, 300)  # cached: a scrape storm reads once
    assert len(reads) == 1
    metrics.credits._cache._entries.clear()  # as if the TTL had passed
    assert await metrics.credits.get() == (0, 500)
    # SQLite: the second read starts past the first's entries; PostgreSQL: they are younger
    # than the commit lag, so they are read again (and still counted once).
    assert reads[0] == 0 and (reads[1] > 0) is (books.dialect == "sqlite")

    logs, cache = components(books)
    scrape = prometheus.parse(await metrics.exposition(logs, cache))
    assert scrape.value("tollgate_credits_charged_nanos") == 500
    assert scrape.types["tollgate_credits_held_nanos"] == "gauge"


async def test_the_page_is_served_without_the_totals_when_the_database_fails(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.close()
    Path(store.sqlite_path).parent.joinpath("unused.db").write_bytes(b"not a database")
    metrics = Metrics(store)
    scrape = prometheus.parse(await metrics.exposition(*components(store)))
    assert "tollgate_requests_total" in scrape.types
    assert "tollgate_credits_held_nanos" not in scrape.types
    assert "credit totals" in caplog.text
