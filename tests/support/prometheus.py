"""A small, strict parser of the Prometheus text exposition format (0.0.4), for tests.

Strict where a scraper would be: every sample belongs to a family announced by `# TYPE` (and
`# HELP`) before it, a sample's name is the family's or, for a histogram, the family's with
`_bucket`, `_sum` or `_count`, label values are quoted and escaped, and no series repeats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Series = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[Series, int | float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> int | float:
        """The one series with exactly these labels; 0 when it is absent (a counter not yet
        incremented)."""
        return self.samples.get((name, frozenset(labels.items())), 0)

    def total(self, name: str, **labels: str) -> int | float:
        """The sum over every series of `name` whose labels include these."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.samples if n == name]


def unescape(text: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], text)


def parse_labels(text: str) -> frozenset[tuple[str, str]]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match is not None, f"bad labels at {text[position:]!r}"
        name, value = match.group(1), unescape(match.group(2))
        assert name not in labels, f"label {name} repeated"
        labels[name] = value
        position = match.end()
    return frozenset(labels.items())


def parse_value(text: str) -> int | float:
    if text in ("+Inf", "-Inf", "NaN"):
        return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}[text]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text)


def parse(text: str) -> Scrape:
    assert text.endswith("\n"), "the exposition ends with a line feed"
    scrape = Scrape()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in scrape.helps, f"HELP for {name} twice"
            scrape.helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in scrape.types, f"TYPE for {name} twice"
            scrape.types[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert _family(scrape, name) is not None, f"{name} has no TYPE before it"
            series = (name, parse_labels(labels or ""))
            assert series not in scrape.samples, f"{series} repeated"
            scrape.samples[series] = parse_value(value)
    return scrape


def _family(scrape: Scrape, name: str) -> str | None:
    if name in scrape.types:
        return name
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and scrape.types.get(base) == "histogram":
            return base
    return None
