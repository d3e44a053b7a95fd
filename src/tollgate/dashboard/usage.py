"""The Usage page (issue: dashboard item 7): cost and tokens over time, by model or by provider.

GET /dashboard/{account_id}/usage?range=24h|7d|30d&bucket=hour|day&split=model|provider   (read)

The figures are the ledger's `usage` entries, the rows `GET billing/usage-history` sums
(`store.usage_breakdown.usage_slices` uses its bucketing and filter), so the page's total cost
for a range is the API's to the nano-dollar. Tokens are the ones each charge was billed for.

A range is a whole number of UTC buckets ending with the current one: the last 24 hours by hour
are the 24 hours up to and including this one; the last 7 days by day are today and the 6 days
before it (the last 24 hours by day is today, UTC). An unknown value in the URL is named in an
inline message (400) and the page shows the default instead; it never fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.dashboard.core import DashboardCore, Viewer
from tollgate.dashboard.format import usd
from tollgate.dashboard.usage_charts import OTHER_COLOUR, PALETTE, Series, wide_and_narrow
from tollgate.store import usage_breakdown
from tollgate.store.usage_breakdown import UsageSlice

# range -> (span, words)
RANGES = {
    "24h": (timedelta(hours=24), "the last 24 hours"),
    "7d": (timedelta(days=7), "the last 7 days"),
    "30d": (timedelta(days=30), "the last 30 days"),
}
BUCKETS = {"hour": 3_600, "day": 86_400}
SPLITS = ("model", "provider")
DEFAULT_RANGE = "7d"
DEFAULT_SPLIT = "model"
UNKNOWN = {"model": "unknown model", "provider": "unknown provider"}
TABLE_OPEN_ROWS = 12  # a longer per-bucket table is folded into a <details>


def default_bucket(range_key: str) -> str:
    return "hour" if range_key == "24h" else "day"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What the page shows, read from the URL; `problems` names each unknown value replaced."""

    range: str
    bucket: str
    split: str
    problems: tuple[str, ...] = ()


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def read_query(params: Mapping[str, str]) -> UsageQuery:
    """The range, bucket and split in the URL, or the defaults where one is missing or unknown."""
    problems: list[str] = []
    range_key = params.get("range") or DEFAULT_RANGE
    if range_key not in RANGES:
        problems.append(
            f"There is no range '{_shown(range_key)}': showing {RANGES[DEFAULT_RANGE][1]}. "
            f"Choose one of {', '.join(RANGES)}."
        )
        range_key = DEFAULT_RANGE
    bucket = params.get("bucket") or default_bucket(range_key)
    if bucket not in BUCKETS:
        fallback = default_bucket(range_key)
        problems.append(
            f"There is no bucket size '{_shown(bucket)}': showing one bar per {fallback}. "
            f"Choose hour or day."
        )
        bucket = fallback
    split = params.get("split") or DEFAULT_SPLIT
    if split not in SPLITS:
        problems.append(
            f"There is no split '{_shown(split)}': showing usage by {DEFAULT_SPLIT}. "
            "Choose model or provider."
        )
        split = DEFAULT_SPLIT
    return UsageQuery(range_key, bucket, split, tuple(problems))


@dataclass(frozen=True, slots=True)
class Figures:
    """Cost and counts of one series, one bucket row, or the whole range."""

    name: str
    colour: str
    cost_nanos: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def plus(self, part: UsageSlice) -> Figures:
        return Figures(
            self.name,
            self.colour,
            self.cost_nanos + part.cost_nanos,
            self.requests + part.requests,
            self.input_tokens + part.input_tokens,
            self.output_tokens + part.output_tokens,
        )


@dataclass(frozen=True, slots=True)
class BucketRow:
    label: str
    figures: Figures


@dataclass(frozen=True, slots=True)
class UsageReport:
    query: UsageQuery
    period: str  # "2025-01-05 10:00 to now (UTC)"
    legend: list[Figures]  # every series, largest cost first
    rows: list[BucketRow]  # per bucket and series with usage, in bucket order
    totals: Figures
    cost_chart: Markup
    token_chart: Markup

    @property
    def empty(self) -> bool:
        return self.totals.requests == 0 and self.totals.cost_nanos == 0

    @property
    def fold_table(self) -> bool:
        return len(self.rows) > TABLE_OPEN_ROWS


def bucket_starts(now: datetime, range_key: str, bucket: str) -> list[int]:
    """The range's buckets (epoch seconds, oldest first), the last one holding `now`."""
    width = BUCKETS[bucket]
    count = max(1, int(RANGES[range_key][0].total_seconds()) // width)
    current = int(now.timestamp()) // width * width
    return [current - (count - 1 - i) * width for i in range(count)]


def series_name(model: str | None, split: str) -> str:
    if not model:
        return UNKNOWN[split]
    if split == "provider":
        provider, slash, _ = model.partition("/")
        return provider if slash else UNKNOWN[split]
    return model


def compact_count(value: int) -> str:
    """Token counts on an axis: 950, 1.5k, 12k, 3.2M."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if value >= size:
            text = f"{value / size:.1f}".removesuffix(".0")
            return text + suffix
    return str(value)


def _axis_label(start: int, bucket: str, range_key: str) -> str:
    moment = datetime.fromtimestamp(start, UTC)
    if bucket == "day":
        return moment.strftime("%b %d")
    return moment.strftime("%H:00" if range_key == "24h" else "%b %d %H:00")


def _table_label(start: int, bucket: str) -> str:
    moment = datetime.fromtimestamp(start, UTC)
    return moment.strftime("%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H:00")


def _summary(what: str, legend: list[Figures], total: str, show: Callable[[Figures], str]) -> str:
    """The chart's text alternative: the total and each series' share."""
    if not legend:
        return f"{what}: no usage in this range."
    parts = ", ".join(f"{f.name} {show(f)}" for f in legend)
    return f"{what}: {total} in all; {parts}."


def build_report(
    query: UsageQuery, slices: list[UsageSlice], starts: list[int], now: datetime
) -> UsageReport:
    """The page's figures and charts from the usage slices of `starts`' buckets."""
    index = {start: i for i, start in enumerate(starts)}
    by_series: dict[str, Figures] = {}
    cells: dict[tuple[int, str], Figures] = {}
    for part in slices:
        if part.bucket not in index:  # cannot happen for slices read for `starts`; be safe
            continue
        name = series_name(part.model, query.split)
        by_series[name] = by_series.get(name, Figures(name, "")).plus(part)
        key = (part.bucket, name)
        cells[key] = cells.get(key, Figures(name, "")).plus(part)
    ordered = sorted(by_series.values(), key=lambda f: (-f.cost_nanos, -f.requests, f.name))
    colours = {
        f.name: PALETTE[i] if i < len(PALETTE) else OTHER_COLOUR for i, f in enumerate(ordered)
    }
    legend = [replace(f, colour=colours[f.name]) for f in ordered]
    layers = [f.name for f in ordered[: len(PALETTE)]]
    others = [f.name for f in ordered[len(PALETTE) :]]

    def values(names: list[str], pick: str) -> tuple[int, ...]:
        out = []
        for start in starts:
            total = 0
            for name in names:
                cell = cells.get((start, name))
                if cell is not None:
                    total += (
                        cell.cost_nanos
                        if pick == "cost"
                        else cell.input_tokens + cell.output_tokens
                    )
            out.append(total)
        return tuple(out)

    def series(pick: str) -> list[Series]:
        layered = [Series(name, colours[name], values([name], pick)) for name in layers]
        if others:
            label = f"Other ({len(others)} {query.split}s)"
            layered.append(Series(label, OTHER_COLOUR, values(others, pick)))
        return layered

    totals = Figures(
        "Total",
        "",
        sum(f.cost_nanos for f in ordered),
        sum(f.requests for f in ordered),
        sum(f.input_tokens for f in ordered),
        sum(f.output_tokens for f in ordered),
    )
    labels = [_axis_label(s, query.bucket, query.range) for s in starts]
    per = f"per {query.bucket}, by {query.split}"
    cost_chart = wide_and_narrow(
        chart_id="cost-chart",
        title=f"Cost {per}",
        summary=_summary(
            f"Cost {per}, {RANGES[query.range][1]}",
            legend,
            usd(totals.cost_nanos),
            lambda f: usd(f.cost_nanos),
        ),
        labels=labels,
        series=series("cost"),
        format_value=usd,
    )
    token_chart = wide_and_narrow(
        chart_id="token-chart",
        title=f"Tokens (input + output) {per}",
        summary=_summary(
            f"Tokens {per}, {RANGES[query.range][1]}",
            legend,
            f"{totals.input_tokens + totals.output_tokens:,} tokens",
            lambda f: f"{f.input_tokens + f.output_tokens:,}",
        ),
        labels=labels,
        series=series("tokens"),
        format_value=compact_count,
    )
    rows = [
        BucketRow(
            _table_label(start, query.bucket),
            replace(cells[(start, f.name)], colour=colours[f.name]),
        )
        for start in starts
        for f in ordered
        if (start, f.name) in cells
    ]
    first = datetime.fromtimestamp(starts[0], UTC)
    period = first.strftime("%Y-%m-%d" if query.bucket == "day" else "%Y-%m-%d %H:00")
    return UsageReport(
        query=query,
        period=f"{period} to {now.strftime('%Y-%m-%d %H:%M')} (UTC)",
        legend=legend,
        rows=rows,
        totals=totals,
        cost_chart=cost_chart,
        token_chart=token_chart,
    )


class UsagePage:
    """Charts and tables of the account's Unified Billing usage."""

    def __init__(self, core: DashboardCore) -> None:
        self.core = core

    async def show(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        query = read_query(request.query_params)
        services = self.core.services
        now = services.topups.clock()  # the billing API's clock, as the overview uses
        starts = bucket_starts(now, query.range, query.bucket)
        width = BUCKETS[query.bucket]
        slices = await usage_breakdown.usage_slices(
            services.store,
            viewer.account.id,
            start=datetime.fromtimestamp(starts[0], UTC),
            end=datetime.fromtimestamp(starts[-1] + width, UTC),
            width_seconds=width,
        )
        report = build_report(query, slices, starts, now)
        context = self.core.shell(
            viewer,
            "usage",
            report=report,
            ranges={key: words for key, (_, words) in RANGES.items()},
            buckets=tuple(BUCKETS),
            splits=SPLITS,
            endpoint=f"{str(request.base_url).rstrip('/')}/v1/{viewer.account.id}/default"
            "/compat/chat/completions",
            error=" ".join(query.problems) or None,
        )
        return self.core.pages.render("usage.html", context, status=400 if query.problems else 200)


def routes(core: DashboardCore) -> list[Route]:
    page = UsagePage(core)
    return [Route("/{account_id}/usage", page.show, methods=["GET"])]
