"""Stacked bar charts as inline SVG, drawn on the server (no script, no chart library, no CDN).

The CSP forbids inline `style=` attributes, so the chart carries only SVG presentation
attributes (`fill`, `x`, `height`, ...), which CSP allows; the shared look (fonts, grid lines,
axis text) is in `static/usage.css`. Each chart is an `img` with a `<title>` and a `<desc>`
summary for screen readers; every bar segment has a `<title>` (a tooltip on hover), and the page
shows the same figures in a plain table below the chart.

Each chart is drawn twice, in a wide and a narrow frame (`wide_and_narrow`), and the stylesheet
shows the one that fits its box (a container query): an SVG scales its text with it, so one
drawing would be unreadable on a phone or oversized on a wide screen.

The y axis runs from 0 to a round maximum (`nice_scale`), so a bar's height is its value over
that maximum times the plot height: heights are proportional to values, and buckets are drawn
left to right in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from markupsafe import Markup

# Colours for series, in order (the largest series first). Each has at least 3:1 contrast
# against the white card (WCAG 1.4.11 for graphics); segments are also split by a white line.
PALETTE = (
    "#2f6db5",  # blue
    "#d55e00",  # vermillion
    "#008a63",  # green
    "#8050b0",  # purple
    "#b07800",  # ochre
    "#c8377f",  # magenta
    "#1f8394",  # teal
)
OTHER_COLOUR = "#5f6b78"  # grey: what the palette has no room for, summed as "Other"

TEXT_SIZE = 13  # user units; `static/usage.css` sets the same font size on `.tick`
CHAR_WIDTH = 0.6 * TEXT_SIZE  # a generous average, so x labels never overlap


@dataclass(frozen=True, slots=True)
class Frame:
    """The chart's drawing box in SVG user units. The page draws each chart twice, `WIDE` for
    screens from 760 px and `NARROW` for phones (CSS shows one), so the text stays legible at
    either width without the chart scrolling sideways."""

    name: str
    width: int
    height: int
    left: int  # room for the y axis labels
    right: int
    top: int
    bottom: int  # room for the x axis labels
    max_x_labels: int

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom


WIDE = Frame("wide", 800, 260, 78, 12, 14, 34, 8)
NARROW = Frame("narrow", 360, 240, 70, 8, 12, 34, 4)
TICK_STEPS = (1, 2, 5)
MAX_TICKS = 5


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked layer: a name, its colour and one value per bucket (non-negative)."""

    name: str
    colour: str
    values: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.values)


@dataclass(frozen=True, slots=True)
class Scale:
    """The y axis: 0 to `maximum`, with a tick every `step`."""

    maximum: int
    step: int

    @property
    def ticks(self) -> list[int]:
        return list(range(0, self.maximum + 1, self.step))


def nice_scale(largest: int) -> Scale:
    """A y axis from 0 that fits `largest`, with at most `MAX_TICKS` round steps (1, 2 or 5
    times a power of ten). Values are integers (nano-dollars, tokens), so the step is at
    least 1."""
    if largest <= 0:
        return Scale(1, 1)
    magnitude = 1
    while True:
        for multiple in TICK_STEPS:
            step = multiple * magnitude
            if -(-largest // step) <= MAX_TICKS:
                return Scale(-(-largest // step) * step, step)
        magnitude *= 10


def _number(value: float) -> str:
    """SVG coordinates with at most two decimals and no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _label_every(labels: Sequence[str], frame: Frame) -> int:
    """Label every n-th bucket: at most `max_x_labels`, and never two labels overlapping."""
    count = len(labels)
    slot = frame.plot_width / count
    widest = max(len(label) for label in labels) * CHAR_WIDTH + TEXT_SIZE
    return max(1, -(-count // frame.max_x_labels), int(-(-widest // slot)))


def stacked_bars(
    *,
    chart_id: str,
    title: str,
    summary: str,
    labels: Sequence[str],
    series: Sequence[Series],
    format_value: Callable[[int], str],
    empty_text: str = "No usage in this range",
    frame: Frame = WIDE,
) -> Markup:
    """An SVG of one stacked bar per bucket (`labels`, in order), layered by `series`.

    `format_value` writes the y axis and the tooltips (`usd` for money). With no buckets or
    nothing above zero, the axes are drawn with `empty_text` in the middle."""
    count = len(labels)
    for layer in series:
        if len(layer.values) != count:
            raise ValueError(f"series {layer.name!r} has {len(layer.values)} values for {count}")
        if any(value < 0 for value in layer.values):
            raise ValueError(f"series {layer.name!r} has a negative value")
    stacks = [sum(layer.values[i] for layer in series) for i in range(count)]
    scale = nice_scale(max(stacks, default=0))
    left, right, top_edge = frame.left, frame.width - frame.right, frame.top
    plot_width, plot_height = frame.plot_width, frame.plot_height
    baseline = top_edge + plot_height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {frame.name}" '
        f'id="{escape(chart_id)}" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(summary)}</desc>',
        '<g class="axis y">',
    ]
    for tick in scale.ticks:
        y = _number(baseline - tick * plot_height / scale.maximum)
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{y}" y2="{y}"/>')
        parts.append(
            f'<text class="tick" x="{left - 8}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(format_value(tick))}</text>'
        )
    parts.append("</g>")
    if count and any(stacks):
        slot = plot_width / count
        bar = max(1.0, slot * 0.72)
        parts.append('<g class="bars">')
        for index, label in enumerate(labels):
            x = _number(left + index * slot + (slot - bar) / 2)
            top = float(baseline)
            for layer in series:
                value = layer.values[index]
                if value <= 0:
                    continue
                height = value * plot_height / scale.maximum
                top -= height
                parts.append(
                    f'<rect class="segment" data-bucket="{index}" x="{x}" y="{_number(top)}" '
                    f'width="{_number(bar)}" height="{_number(height)}" fill="{layer.colour}">'
                    f"<title>{escape(label)} · {escape(layer.name)}: "
                    f"{escape(format_value(value))}</title></rect>"
                )
        parts.append("</g>")
    else:
        parts.append(
            f'<text class="empty" x="{left + plot_width // 2}" y="{top_edge + plot_height // 2}" '
            f'text-anchor="middle">{escape(empty_text)}</text>'
        )
    parts.append(
        f'<line class="axis-line" x1="{left}" x2="{right}" y1="{baseline}" y2="{baseline}"/>'
    )
    if count:
        slot = plot_width / count
        every = _label_every(labels, frame)
        parts.append('<g class="axis x">')
        for index in range(0, count, every):
            centre = left + index * slot + slot / 2
            half = len(labels[index]) * CHAR_WIDTH / 2
            anchor = "middle"
            if centre + half > frame.width:  # keep the label inside the chart
                anchor, centre = "end", frame.width - 1
            parts.append(
                f'<text class="tick" x="{_number(centre)}" y="{baseline + 20}" '
                f'text-anchor="{anchor}">{escape(labels[index])}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    # Every piece of text above went through `escape`; the rest is our own markup.
    return Markup("".join(parts))  # noqa: S704


def wide_and_narrow(*, chart_id: str, **chart: Any) -> Markup:
    """The chart drawn in both frames: `chart_id` is the wide one, `{chart_id}-narrow` the
    phone one; `static/usage.css` shows the one that fits its container."""
    wide = stacked_bars(chart_id=chart_id, frame=WIDE, **chart)
    narrow = stacked_bars(chart_id=f"{chart_id}-narrow", frame=NARROW, **chart)
    return wide + narrow
