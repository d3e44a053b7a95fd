"""Test controls: how a request asks the simulator to be slow, fail, drop or change its numbers.

A control can be given three ways; the first one found wins:

1. a request header ``x-sim-{name}: value`` (``x-sim-error: 429``);
2. a model-name suffix ``{model}~{name}={value}`` (``gpt-4o-mini~error=429~latency-ms=50``), handy
   when only the model name reaches the upstream; the suffix is stripped before the model is
   echoed back;
3. a directive in the last user message, ``[sim {name}={value} ...]``
   (``"hello [sim output-tokens=5 chunks=2]"``), handy through translating gateways.

The names are listed in ``CONTROL_NAMES`` and documented in the package docstring. Every value
is a non-negative integer except ``search-context`` (``low``, ``medium`` or ``high``); an invalid
value raises ``InvalidControl``, which the endpoint answers with a 400 in the provider's error
shape naming the ``x-sim-{name}`` at fault.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

CONTROL_NAMES = (
    "latency-ms",
    "chunk-delay-ms",
    "drop-after",
    "garble-after",
    "omit-last",
    "junk-lines",
    "error",
    "output-tokens",
    "chunks",
    "cached-tokens",
    "cache-write-tokens",
    "cache-write-1h-tokens",
    "reasoning-tokens",
    "retry-after",
    "search-context",
    "citation-tokens",
    "search-queries",
    "fail-first",
    "fail-status",
    "fail-latency-ms",
    "fail-key",
)
# Controls whose values are text, not integers.
_TEXT_CONTROLS = ("search-context", "fail-key")
_FAIL_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# The values of ``search-context`` (Perplexity's ``search_context_size``).
SEARCH_CONTEXT_SIZES = ("low", "medium", "high")
HEADER_PREFIX = "x-sim-"
_DIRECTIVE = re.compile(r"\[sim((?:\s+[a-z0-9-]+=[^\s\]]+)+)\s*\]")
_MAX_DELAY_MS = 600_000
_MAX_JUNK_LINES = 100


class InvalidControl(ValueError):
    """A control value of the wrong kind: not a non-negative integer, or (``search-context``)
    not one of ``SEARCH_CONTEXT_SIZES``. Rendered as a 400 by the provider."""


@dataclass(frozen=True)
class Controls:
    """The parsed controls of one request. ``None`` means "not set, use the default rule".

    ``cache_write_tokens`` is the TOTAL of cache writes asked for and ``cache_write_1h_tokens``
    how many of them were 1-hour writes; the engine resolves the two (``engine._prompt_usage``).
    ``search_context``, ``citation_tokens`` and ``search_queries`` are Perplexity's usage extras,
    reported by the Chat Completions API only."""

    latency_ms: int = 0
    chunk_delay_ms: int = 0
    drop_after: int | None = None
    garble_after: int | None = None
    omit_last: int = 0
    junk_lines: int = 0
    error: int | None = None
    output_tokens: int | None = None
    chunks: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    retry_after: int = 1
    search_context: str | None = None
    citation_tokens: int | None = None
    search_queries: int | None = None
    # Transient failures: the first ``fail_first`` requests carrying the same ``fail_key`` wait
    # ``fail_latency_ms`` and answer ``fail_status``; later ones are answered normally.
    fail_first: int | None = None
    fail_status: int = 503
    fail_latency_ms: int = 0
    fail_key: str = ""
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
    search_context = _search_context(raw["search-context"]) if "search-context" in raw else None
    fail_key = _fail_key(raw["fail-key"]) if "fail-key" in raw else ""
    values = {
        name: _non_negative_int(name, value)
        for name, value in raw.items()
        if name not in _TEXT_CONTROLS
    }
    return Controls(
        latency_ms=min(values.get("latency-ms", 0), _MAX_DELAY_MS),
        chunk_delay_ms=min(values.get("chunk-delay-ms", 0), _MAX_DELAY_MS),
        drop_after=values.get("drop-after"),
        garble_after=values.get("garble-after"),
        omit_last=values.get("omit-last", 0),
        junk_lines=min(values.get("junk-lines", 0), _MAX_JUNK_LINES),
        error=values.get("error"),
        output_tokens=values.get("output-tokens"),
        chunks=values.get("chunks") or None,
        cached_tokens=values.get("cached-tokens"),
        cache_write_tokens=values.get("cache-write-tokens"),
        cache_write_1h_tokens=values.get("cache-write-1h-tokens"),
        reasoning_tokens=values.get("reasoning-tokens"),
        retry_after=values.get("retry-after", 1),
        search_context=search_context,
        citation_tokens=values.get("citation-tokens"),
        search_queries=values.get("search-queries"),
        fail_first=values.get("fail-first"),
        fail_status=values.get("fail-status", 503),
        fail_latency_ms=min(values.get("fail-latency-ms", 0), _MAX_DELAY_MS),
        fail_key=fail_key,
        sources=raw,
    )


def _non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidControl(f"{HEADER_PREFIX}{name} must be a non-negative integer") from None
    if number < 0:
        raise InvalidControl(f"{HEADER_PREFIX}{name} must be a non-negative integer")
    if name in ("error", "fail-status") and not 400 <= number <= 599:
        raise InvalidControl(f"{HEADER_PREFIX}{name} must be an HTTP error status (400-599)")
    return number


def _search_context(value: str) -> str:
    size = value.strip().lower()
    if size not in SEARCH_CONTEXT_SIZES:
        raise InvalidControl(
            f"{HEADER_PREFIX}search-context must be one of {', '.join(SEARCH_CONTEXT_SIZES)}"
            f" (got {value!r})"
        )
    return size


def _fail_key(value: str) -> str:
    key = value.strip()
    if not _FAIL_KEY.fullmatch(key):
        raise InvalidControl(
            f"{HEADER_PREFIX}fail-key must be 1 to 128 characters of A-Z, a-z, 0-9, _ . : -"
        )
    return key


class FailureCounter:
    """How many requests of each ``fail-key`` have failed so far, so that a retried request
    fails its first ``fail-first`` times and then succeeds. One per simulator app; thread-safe."""

    def __init__(self) -> None:
        self._failed: dict[str, int] = {}
        self._lock = threading.Lock()

    def should_fail(self, controls: Controls) -> bool:
        """Whether this request is one of the first ``fail_first`` of its key (and count it)."""
        if not controls.fail_first:
            return False
        with self._lock:
            failed = self._failed.get(controls.fail_key, 0)
            if failed >= controls.fail_first:
                return False
            self._failed[controls.fail_key] = failed + 1
            return True
