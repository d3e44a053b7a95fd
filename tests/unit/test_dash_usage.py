"""The Usage page's pure parts: the SVG stacked bar chart, the range and bucket choices read from
the URL, the report built from usage slices, and the tokens read from a usage entry's note."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from tollgate.billing.catalog import load_catalog
from tollgate.billing.meter import _note
from tollgate.canonical import Usage
from tollgate.dashboard.format import usd
from tollgate.dashboard.usage import (
    DEFAULT_RANGE,
    bucket_starts,
    build_report,
    compact_count,
    read_query,
    series_name,
)
from tollgate.dashboard.usage_charts import (
    CHAR_WIDTH,
    NARROW,
    PALETTE,
    WIDE,
    Series,
    nice_scale,
    stacked_bars,
    wide_and_narrow,
)
from tollgate.store.usage_breakdown import UsageSlice, billed_tokens

SVG = "{http://www.w3.org/2000/svg}"
PLOT_HEIGHT = WIDE.plot_height


def _svg(**kwargs: object) -> ET.Element:
    defaults: dict[str, object] = {
        "chart_id": "c",
        "title": "Cost per day",
        "summary": "a summary",
        "format_value": usd,
    }
    return ET.fromstring(str(stacked_bars(**{**defaults, **kwargs})))  # type: ignore[arg-type]


def _bars(svg: ET.Element) -> list[ET.Element]:
    return svg.findall(f".//{SVG}rect")


def test_bar_heights_are_proportional_to_values() -> None:
    svg = _svg(
        labels=["a", "b", "c"],
        series=[Series("m1", PALETTE[0], (100, 200, 400)), Series("m2", PALETTE[1], (0, 50, 0))],
    )
    bars = _bars(svg)
    heights = {(b.get("data-bucket"), b.get("fill")): float(b.get("height", "0")) for b in bars}
    assert len(bars) == 4  # a zero value draws no segment
    scale = nice_scale(400)
    for (bucket, fill), value in {
        ("0", PALETTE[0]): 100,
        ("1", PALETTE[0]): 200,
        ("2", PALETTE[0]): 400,
        ("1", PALETTE[1]): 50,
    }.items():
        assert heights[(bucket, fill)] == pytest.approx(
            value * PLOT_HEIGHT / scale.maximum, abs=0.01
        )
    assert heights[("1", PALETTE[0])] == pytest.approx(2 * heights[("0", PALETTE[0])], abs=0.02)
    # Stacked: the second layer sits right on top of the first.
    first = next(b for b in bars if b.get("data-bucket") == "1" and b.get("fill") == PALETTE[0])
    second = next(b for b in bars if b.get("data-bucket") == "1" and b.get("fill") == PALETTE[1])
    assert float(second.get("y", "0")) + float(second.get("height", "0")) == pytest.approx(
        float(first.get("y", "0")), abs=0.02
    )


def test_buckets_are_drawn_left_to_right_in_order() -> None:
    labels = [f"day {n}" for n in range(10)]
    svg = _svg(labels=labels, series=[Series("m", PALETTE[0], tuple(range(1, 11)))])
    xs = [float(b.get("x", "0")) for b in _bars(svg)]
    assert [b.get("data-bucket") for b in _bars(svg)] == [str(n) for n in range(10)]
    assert xs == sorted(xs) and len(set(xs)) == 10
    tips = [b.find(f"{SVG}title") for b in _bars(svg)]
    assert [t.text.split(" · ")[0] for t in tips if t is not None and t.text] == labels
    # The tallest is the last, and the y axis reaches past it.
    heights = [float(b.get("height", "0")) for b in _bars(svg)]
    assert heights == sorted(heights) and heights[-1] <= PLOT_HEIGHT


def test_an_empty_series_draws_axes_and_says_so() -> None:
    for series in ([], [Series("m", PALETTE[0], (0, 0, 0))]):
        svg = _svg(labels=["a", "b", "c"], series=series)
        assert _bars(svg) == []
        texts = [t.text for t in svg.iter(f"{SVG}text")]
        assert "No usage in this range" in texts
    svg = _svg(labels=[], series=[])
    assert _bars(svg) == []


def test_the_chart_is_accessible_and_escapes_text() -> None:
    svg = _svg(
        title="Cost <by> model",
        summary="total & more",
        labels=["<b>"],
        series=[Series('evil"name<', PALETTE[0], (5,))],
    )
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "c-title c-desc"
    assert svg.find(f"{SVG}title").text == "Cost <by> model"  # type: ignore[union-attr]
    assert svg.find(f"{SVG}desc").text == "total & more"  # type: ignore[union-attr]
    assert 'evil"name<' in (_bars(svg)[0].find(f"{SVG}title").text or "")  # type: ignore[union-attr]
    assert "style" not in str(
        stacked_bars(
            chart_id="c",
            title="t",
            summary="s",
            labels=["a"],
            series=[Series("m", PALETTE[0], (1,))],
            format_value=str,
        )
    )


def test_a_series_of_the_wrong_length_or_negative_is_refused() -> None:
    with pytest.raises(ValueError, match="has 1 values for 2"):
        _svg(labels=["a", "b"], series=[Series("m", PALETTE[0], (1,))])
    with pytest.raises(ValueError, match="negative"):
        _svg(labels=["a"], series=[Series("m", PALETTE[0], (-1,))])


@pytest.mark.parametrize(
    ("largest", "maximum", "step"),
    [
        (0, 1, 1),
        (1, 1, 1),
        (7, 8, 2),
        (400, 400, 100),
        (3_700_000, 4_000_000, 1_000_000),
        (101, 150, 50),
    ],
)
def test_the_y_axis_is_round(largest: int, maximum: int, step: int) -> None:
    scale = nice_scale(largest)
    assert (scale.maximum, scale.step) == (maximum, step)
    assert scale.maximum >= largest and len(scale.ticks) <= 6


def _luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def test_every_palette_colour_has_3_to_1_contrast_on_white() -> None:
    assert len(set(PALETTE)) == len(PALETTE)
    for colour in PALETTE:
        assert 1.05 / (_luminance(colour) + 0.05) >= 3.0, colour


def test_unknown_url_values_fall_back_to_defaults_with_a_message() -> None:
    assert read_query({}) == read_query({"range": DEFAULT_RANGE, "bucket": "day", "split": "model"})
    assert read_query({"range": "24h"}).bucket == "hour"
    query = read_query({"range": "1y", "bucket": "minute", "split": "colour"})
    assert (query.range, query.bucket, query.split) == (DEFAULT_RANGE, "day", "model")
    assert len(query.problems) == 3
    assert "There is no range '1y'" in query.problems[0]
    long = read_query({"range": "x" * 500})
    assert len(long.problems[0]) < 200


def test_ranges_are_whole_buckets_ending_with_the_current_one() -> None:
    now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)
    hours = bucket_starts(now, "24h", "hour")
    assert len(hours) == 24
    assert hours[-1] == int(datetime(2026, 3, 10, 14, tzinfo=UTC).timestamp())
    assert hours[0] == int(datetime(2026, 3, 9, 15, tzinfo=UTC).timestamp())
    days = bucket_starts(now, "7d", "day")
    assert len(days) == 7 and days[0] == int(datetime(2026, 3, 4, tzinfo=UTC).timestamp())
    assert bucket_starts(now, "24h", "day") == [int(datetime(2026, 3, 10, tzinfo=UTC).timestamp())]
    assert len(bucket_starts(now, "30d", "hour")) == 720


def test_series_names_by_model_and_by_provider() -> None:
    assert series_name("openai/gpt-4o-mini", "model") == "openai/gpt-4o-mini"
    assert series_name("workers-ai/@cf/meta/llama", "provider") == "workers-ai"
    assert series_name(None, "model") == "unknown model"
    assert series_name("odd", "provider") == "unknown provider"
    assert compact_count(950) == "950" and compact_count(1_500) == "1.5k"
    assert compact_count(2_000_000) == "2M"


def test_the_report_adds_up_and_splits_by_provider() -> None:
    now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)
    starts = bucket_starts(now, "7d", "day")
    slices = [
        UsageSlice(starts[2], "openai/gpt-4o-mini", 300, 3, 30, 60),
        UsageSlice(starts[2], "anthropic/claude-sonnet-4-6", 900, 1, 10, 20),
        UsageSlice(starts[6], "openai/gpt-4o", 500, 2, 5, 5),
    ]
    by_model = build_report(read_query({}), slices, starts, now)
    assert [f.name for f in by_model.legend] == [
        "anthropic/claude-sonnet-4-6",
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
    ]
    assert (by_model.totals.cost_nanos, by_model.totals.requests) == (1_700, 6)
    assert (by_model.totals.input_tokens, by_model.totals.output_tokens) == (45, 85)
    assert [r.label for r in by_model.rows] == ["2026-03-06", "2026-03-06", "2026-03-10"]
    by_provider = build_report(read_query({"split": "provider"}), slices, starts, now)
    assert {f.name: f.cost_nanos for f in by_provider.legend} == {"anthropic": 900, "openai": 800}
    assert by_provider.totals == by_model.totals
    assert "anthropic" in str(by_provider.cost_chart)
    assert not by_model.empty
    assert build_report(read_query({}), [], starts, now).empty


def test_more_series_than_colours_share_one_grey_layer() -> None:
    now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)
    starts = bucket_starts(now, "24h", "hour")
    slices = [UsageSlice(starts[0], f"p/m{n}", 100 + n, 1, 1, 1) for n in range(10)]
    report = build_report(read_query({"range": "24h"}), slices, starts, now)
    assert len(report.legend) == 10
    svg = ET.fromstring(f"<charts>{report.cost_chart}</charts>")[0]  # the wide one
    assert svg.get("id") == "cost-chart"
    titles = [t.text or "" for t in svg.iter(f"{SVG}title")]
    assert any("Other (3 models)" in t for t in titles)
    assert len(_bars(svg)) == len(PALETTE) + 1


def test_tokens_are_read_back_from_the_note_the_meter_writes() -> None:
    catalog = load_catalog()
    price = catalog.lookup("openai", "gpt-4o-mini")
    assert price is not None
    note = _note(price, Usage(input_tokens=1234, output_tokens=56), False, False)
    assert billed_tokens(note) == (1234, 56)
    estimated = _note(price, Usage(input_tokens=7, output_tokens=8), True, True, True)
    assert billed_tokens(estimated) == (7, 8)
    assert billed_tokens("bedrock/anthropic.claude-v1:0: 3 in, 4 out") == (3, 4)
    assert billed_tokens("manual correction") == (0, 0)


@pytest.mark.parametrize("count", [1, 7, 24, 30, 168, 720])
@pytest.mark.parametrize("frame", [WIDE, NARROW])
def test_x_labels_never_overlap_and_stay_inside(count: int, frame: object) -> None:
    labels = [f"Nov {n % 30 + 1:02d} {n % 24:02d}:00" for n in range(count)]
    svg = ET.fromstring(
        str(
            stacked_bars(
                chart_id="c",
                title="t",
                summary="s",
                labels=labels,
                series=[Series("m", PALETTE[0], (1,) * count)],
                format_value=str,
                frame=frame,  # type: ignore[arg-type]
            )
        )
    )
    spans = []
    for text in svg.find(f"{SVG}g[@class='axis x']") or []:
        width = len(text.text or "") * CHAR_WIDTH
        x = float(text.get("x", "0"))
        left = {"middle": x - width / 2, "end": x - width}[text.get("text-anchor", "")]
        spans.append((left, left + width))
    assert spans and all(right <= frame.width for _, right in spans)  # type: ignore[attr-defined]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_each_chart_comes_wide_and_narrow() -> None:
    both = str(
        wide_and_narrow(
            chart_id="cost-chart",
            title="t",
            summary="s",
            labels=["a"],
            series=[Series("m", PALETTE[0], (1,))],
            format_value=str,
        )
    )
    assert 'id="cost-chart"' in both and 'id="cost-chart-narrow"' in both
    assert 'class="chart wide"' in both and 'class="chart narrow"' in both
