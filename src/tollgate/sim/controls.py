"""Test controls: how a request asks the simulator to be slow, fail, drop or change its numbers.

A control can be given three ways; the first one found wins:

1. a request header ``x-sim-{name}: value`` (``x-sim-error: 429``);
2. a model-name suffix ``{model}~{name}={value}`` (``gpt-4o-mini~error=429~latency-ms=50``), handy
   when only the model name reaches the upstream; the suffix is stripped before the model is
   echoed back;
3. a directive in the last user message, ``[sim {name}={value} ...]``
   (``"hello [sim output-tokens=5 chunks=2]"``), handy through translating gateways.

The names are listed in ``CONTROL_NAMES`` and documented in the package docstring.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

CONTROL_NAMES = (
    "latency-ms",
    "chunk-delay-ms",
    "drop-after",
    "garble-after",
    "error",
    "output-tokens",
    "chunks",
    "cached-tokens",
    "cache-write-tokens",
    "reasoning-tokens",
    "retry-after",
)
HEADER_PREFIX = "x-sim-"
_DIRECTIVE = re.compile(r"\[sim((?:\s+[a-z-]+=[^\s\]]+)+)\s*\]")
_MAX_DELAY_MS = 600_000


class InvalidControl(ValueError):
    """A control value that is not a non-negative integer (rendered as a 400 by the provider)."""


@dataclass(frozen=True)
class Controls:
    """The parsed controls of one request. ``None`` means "not set, use the default rule"."""

    latency_ms: int = 0
    chunk_delay_ms: int = 0
    drop_after: int | None = None
    garble_after: int | None = None
    error: int | None = None
    output_tokens: int | None = None
    chunks: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    retry_after: int = 1
    sources: Mapping[str, str] = field(default_factory=dict)


def split_model(model: str) -> tuple[str, dict[str, str]]:
    """``"gpt-4o~error=429"`` -> ``("gpt-4o", {"error": "429"})``."""
    base, *suffixes = model.split("~")
    found: dict[str, str] = {}
    for suffix in suffixes:
        name, sep, value = suffix.partition("=")
        if sep and name in CONTROL_NAMES:
            found[name] = value
    return base, found


def directives_in(text: str) -> dict[str, str]:
    """Controls written in a prompt as ``[sim name=value ...]``."""
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        for pair in match.group(1).split():
            name, _, value = pair.partition("=")
            if name in CONTROL_NAMES:
                found.setdefault(name, value)
    return found


def parse_controls(headers: Mapping[str, str], model: str, prompt: str) -> Controls:
    """Merge the three sources (header > model suffix > prompt directive) into ``Controls``."""
    raw = directives_in(prompt)
    raw.update(split_model(model)[1])
    for name in CONTROL_NAMES:
        value = headers.get(HEADER_PREFIX + name)
        if value is not None:
            raw[name] = value
    values = {name: _non_negative_int(name, value) for name, value in raw.items()}
    return Controls(
        latency_ms=min(values.get("latency-ms", 0), _MAX_DELAY_MS),
        chunk_delay_ms=min(values.get("chunk-delay-ms", 0), _MAX_DELAY_MS),
        drop_after=values.get("drop-after"),
        garble_after=values.get("garble-after"),
        error=values.get("error"),
        output_tokens=values.get("output-tokens"),
        chunks=values.get("chunks") or None,
        cached_tokens=values.get("cached-tokens"),
        cache_write_tokens=values.get("cache-write-tokens"),
        reasoning_tokens=values.get("reasoning-tokens"),
        retry_after=values.get("retry-after", 1),
        sources=raw,
    )


def _non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidControl(f"{HEADER_PREFIX}{name} must be a non-negative integer") from None
    if number < 0:
        raise InvalidControl(f"{HEADER_PREFIX}{name} must be a non-negative integer")
    if name == "error" and not 400 <= number <= 599:
        raise InvalidControl(f"{HEADER_PREFIX}error must be an HTTP error status (400-599)")
    return number
