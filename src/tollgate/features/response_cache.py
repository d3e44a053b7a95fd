"""The exact-match response cache (Cloudflare AI Gateway's caching, PRODUCT.md §5).

A request is cached when its gateway has a `cache_ttl`, or it sends `cf-aig-cache-ttl` (60 s to
one month), or a `cf-aig-cache-key` (5 minutes when no TTL says otherwise);
`cf-aig-skip-cache: true` neither looks up nor stores. A looked-up request is answered with
`cf-aig-cache-status: HIT` or `MISS`.

The key is a SHA-256 of everything that decides the answer: the surface and endpoint, method,
query, the credential that pays (a hash of the client's provider key, or "managed"), the few
request headers that change an answer (API versions, organisation, stored-key alias) and the
body, or the `cf-aig-cache-key` in its place. It is prefixed with the account and gateway, and
includes the gateway's creation time and, when `cache_invalidate_on_update` is on, the time of
its last settings update, so an update makes earlier entries unreachable in every process.

What is stored is the response as the client received it: status, headers, and the body chunks
(a stream is replayed as a stream). Only complete 2xx answers are stored: not a stream the
upstream broke or the client left, not an answer whose output the gateway capped for a low
balance, nothing over `[cache] max_entry_bytes`. Gateway-made headers (`cf-aig-*`: log id,
cost, credits) and a stream's cost comment are dropped; a hit gets its own log id, reports
`cf-aig-cost: 0`, and touches neither the ledger nor the upstream.

Entries live in the process (LRU, `[cache] memory_max_bytes`) or, with `[redis] url`, in Redis,
shared by every process. A Redis failure is a miss, logged; it never fails the request.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import Message, Send

from tollgate.features.context import RequestContext
from tollgate.features.headers import boolean_header, header, integer_header, invalid_header
from tollgate.features.redis import FailureLog
from tollgate.gateway_config import CACHE_TTL_MAX_SECONDS
from tollgate.money import header_dollars
from tollgate.store import GatewayRecord
from tollgate.upstream import UpstreamResponse, UpstreamStreamBroken

TTL_MIN_SECONDS = 60
CUSTOM_KEY_TTL_SECONDS = 300  # a custom key on a gateway without caching, and no TTL header
CACHE_KEY_MAX_BYTES = 1024
_TTL = b"cf-aig-cache-ttl"
_SKIP = b"cf-aig-skip-cache"
_KEY = b"cf-aig-cache-key"
_LEGACY = {b"cf-cache-ttl": _TTL, b"cf-skip-cache": _SKIP}  # Cloudflare's deprecated names
_NAMES = frozenset({_TTL, _SKIP, _KEY, *_LEGACY})
# Request headers that change what the upstream answers; every other header is left out.
_ANSWER_HEADERS = (
    b"anthropic-version",
    b"anthropic-beta",
    b"openai-organization",
    b"openai-project",
    b"openai-beta",
    b"cf-aig-byok-alias",
)
_CACHEABLE_METHODS = frozenset({"GET", "POST"})
_STATUS = b"cf-aig-cache-status"
_HIT = [(_STATUS, b"HIT"), (b"cf-aig-cost", header_dollars(0).encode())]
_MISS = [(_STATUS, b"MISS")]
_CAPPED = b"cf-aig-max-tokens-capped"
_COST_COMMENT = re.compile(rb"(?m)^: cf-aig-cost=[^\n]*\n\n?")


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """What the request's `cf-aig-*` cache headers ask for."""

    ttl: int | None = None
    skip: bool = False
    key: str | None = None


NO_OPTIONS = CacheOptions()


def cache_options(headers: list[tuple[bytes, bytes]]) -> CacheOptions:
    """The request's cache headers, or a 400 naming the bad one. Read before anything is stored
    or sent; most requests send none, and pay one pass over their headers."""
    if not any(k in _NAMES for k, _ in headers):
        return NO_OPTIONS
    sent = [(_LEGACY.get(k, k), v) for k, v in headers if k in _NAMES]
    month = CACHE_TTL_MAX_SECONDS
    ttl = integer_header(sent, _TTL, TTL_MIN_SECONDS, month, " seconds (60 s to one month)")
    skip = boolean_header(sent, _SKIP) or False
    key = header(sent, _KEY)
    if key is not None:
        size = len(key.encode("latin-1"))
        if size == 0 or size > CACHE_KEY_MAX_BYTES:
            raise invalid_header(_KEY, f"1 to {CACHE_KEY_MAX_BYTES} bytes", f"{size} bytes")
    return CacheOptions(ttl, skip, key)


def key_parts(
    *,
    endpoint: str,
    method: str,
    query: str,
    credential: str | None,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> list[bytes]:
    """What identifies a request's answer. `endpoint` names the surface and path (e.g.
    `native:openai/chat/completions`), `credential` is the client's own provider key when it
    pays (None: the operator's managed key or a stored key)."""
    paying = b"managed" if credential is None else hashlib.sha256(credential.encode()).digest()
    chosen = [b"%s=%s" % (k, v) for k, v in headers if k in _ANSWER_HEADERS]
    return [endpoint.encode(), method.encode(), query.encode(), paying, *sorted(chosen), body]


@dataclass(slots=True)
class Entry:
    """A response as the client received it, minus gateway-made headers."""

    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    whole: bool  # one body with a content-length; otherwise replayed as a stream

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks)) + sum(len(k) + len(v) for k, v in self.headers)

    def encode(self) -> bytes:
        meta = {
            "s": self.status,
            "w": self.whole,
            "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "n": [len(chunk) for chunk in self.chunks],
        }
        return orjson.dumps(meta) + b"\n" + b"".join(self.chunks)

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        head, _, body = data.partition(b"\n")  # orjson never writes a raw newline
        meta = orjson.loads(head)
        chunks, at = [], 0
        for length in meta["n"]:
            chunks.append(body[at : at + length])
            at += length
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"]]
        return cls(meta["s"], headers, chunks, meta["w"])


class Backend(Protocol):
    async def get(self, key: str) -> Entry | None: ...
    async def set(self, key: str, entry: Entry, ttl: int) -> None: ...


class MemoryBackend:
    """Entries in this process, least recently used evicted beyond `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: OrderedDict[str, tuple[float, int, Entry]] = OrderedDict()

    async def get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[2]

    async def set(self, key: str, entry: Entry, ttl: int) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (time.monotonic() + ttl, size, entry)
        self.used += size
        while self.used > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.used -= found[1]


class RedisBackend:
    """Entries in Redis (`SET key value EX ttl`), shared by every process using it. While Redis
    fails, this process's own `fallback` serves instead (a miss at first, then what this process
    stored meanwhile), so an outage degrades the cache to per-process, never to an error."""

    def __init__(self, redis: Redis, prefix: str, fallback: MemoryBackend) -> None:
        self._redis = redis
        self._prefix = prefix + "cache:"
        self._fallback = fallback
        self._failures = FailureLog("response cache")

    async def get(self, key: str) -> Entry | None:
        try:
            data = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._failures.failed(exc, "this process caches on its own until it answers")
            return await self._fallback.get(key)
        if not isinstance(data, bytes):
            return None
        try:
            return Entry.decode(data)
        except (ValueError, KeyError, TypeError):  # not written by this version: a miss
            return None

    async def set(self, key: str, entry: Entry, ttl: int) -> None:
        try:
            await self._redis.set(self._prefix + key, entry.encode(), ex=ttl)
        except (RedisError, OSError) as exc:
            self._failures.failed(exc, "this process caches on its own until it answers")
            await self._fallback.set(key, entry, ttl)


class ResponseCache:
    def __init__(self, backend: Backend, *, max_entry_bytes: int) -> None:
        self.backend = backend
        self.max_entry_bytes = max_entry_bytes
        self.hits = 0  # answers replayed from the cache (read by /metrics)
        self.misses = 0  # lookups that found nothing

    async def open(
        self,
        options: CacheOptions,
        gateway: GatewayRecord,
        method: str,
        parts: Sequence[bytes] | Callable[[], Sequence[bytes]],
    ) -> CacheUse:
        """This request's use of the cache: a hit to replay, a miss to capture, or nothing.

        `parts` may be a function making them: then they are made only when the request uses
        the cache (most do not, and `key_parts` hashes the client's key and sorts headers)."""
        ttl = effective_ttl(options, gateway)
        if ttl is None or method not in _CACHEABLE_METHODS:
            return NO_CACHE
        if callable(parts):
            parts = parts()
        if options.key is not None:  # the custom key stands for the body, bar its stream flag
            custom = b"key:" + options.key.encode("latin-1")
            parts = [*parts[:-1], custom, _stream_flag(parts[-1])]
        key = cache_key(gateway, parts)
        hit = await self.backend.get(key)
        if hit is None:
            self.misses += 1
        return CacheUse(self, key, ttl, hit)


def _stream_flag(body: bytes) -> bytes:
    """Whether a JSON body asks for a stream: under one custom key, a streamed and a whole
    answer are different entries, so no client gets the other kind. Parsed only then."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return b""
    return b"stream" if isinstance(parsed, dict) and parsed.get("stream") is True else b""


def effective_ttl(options: CacheOptions, gateway: GatewayRecord) -> int | None:
    """Seconds to keep this request's answer, or None when the request does not use the cache."""
    if options.skip:
        return None
    if options.ttl is not None:
        return options.ttl
    configured = gateway.config.get("cache_ttl") or 0
    if configured > 0:
        return int(configured)
    return CUSTOM_KEY_TTL_SECONDS if options.key is not None else None


def cache_key(gateway: GatewayRecord, parts: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    generation = [gateway.created_at.isoformat().encode()]
    if gateway.config.get("cache_invalidate_on_update"):
        generation.append(gateway.modified_at.isoformat().encode())
    for part in (*generation, *parts):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return f"{gateway.account_id}:{gateway.id}:{digest.hexdigest()}"


class CacheUse:
    """One request and the cache: `served` replays a hit; otherwise `capture` and `observe`
    wrap the relay so that a complete 2xx answer is stored as the client receives it."""

    def __init__(self, cache: ResponseCache | None, key: str, ttl: int, hit: Entry | None):
        self._cache = cache
        self._key = key
        self._ttl = ttl
        self._hit = hit
        self._upstream: _WatchedResponse | None = None
        # A miss that was looked up says so; a request that did not use the cache says nothing.
        self.headers = _MISS if cache is not None else []

    async def served(
        self, send: Send, extra_headers: list[tuple[bytes, bytes]], ctx: RequestContext
    ) -> bool:
        """Replay the hit, if any: no hold, no ledger entry, no upstream call."""
        entry = self._hit
        if entry is None:
            return False
        ctx.cached = True
        ctx.cost_nanos = 0
        if self._cache is not None:
            self._cache.hits += 1
        headers = entry.headers + extra_headers + _HIT
        if entry.whole:
            body = entry.chunks[0] if entry.chunks else b""
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": entry.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return True
        await send({"type": "http.response.start", "status": entry.status, "headers": headers})
        for chunk in entry.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return True

    def capture(self, send: Send) -> Send:
        """`send`, recording what passes for the cache (unchanged when nothing is stored)."""
        if self._cache is None:
            return send
        return _Capture(self, send).send

    def observe(self, response: UpstreamResponse) -> UpstreamResponse:
        """The upstream response, watched for a broken stream or a client that left."""
        if self._cache is None:
            return response
        self._upstream = _WatchedResponse(
            **{f.name: getattr(response, f.name) for f in fields(UpstreamResponse)}
        )
        return self._upstream

    async def _store(self, entry: Entry) -> None:
        if self._cache is None or (self._upstream is not None and self._upstream.broken):
            return
        await self._cache.backend.set(self._key, entry, self._ttl)


NO_CACHE = CacheUse(None, "", 0, None)


class _Capture:
    """Passes ASGI messages on, keeping a copy; stores the entry just before the last body
    message, so the client's next identical request already finds it."""

    def __init__(self, use: CacheUse, send: Send) -> None:
        self._use = use
        self._send = send
        self._limit = use._cache.max_entry_bytes if use._cache is not None else 0
        self._entry: Entry | None = None
        self._size = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start(message)
        elif message["type"] == "http.response.body" and self._entry is not None:
            body: bytes = message.get("body", b"")
            self._size += len(body)
            if self._size > self._limit:
                self._entry = None  # too large to store: relayed only
            elif body:
                self._entry.chunks.append(body)
            if self._entry is not None and not message.get("more_body", False):
                await self._finish(self._entry)
        await self._send(message)

    def _start(self, message: Message) -> None:
        status: int = message["status"]
        sent: list[tuple[bytes, bytes]] = list(message.get("headers", []))
        if not 200 <= status < 300 or any(k == _CAPPED for k, _ in sent):
            return  # errors, and answers cut short for a low balance, are never stored
        whole = any(k == b"content-length" for k, _ in sent)
        kept = [(k, v) for k, v in sent if not _gateway_made(k)]
        self._entry = Entry(status, kept, [], whole)

    async def _finish(self, entry: Entry) -> None:
        if entry.chunks and not entry.whole:  # a stream's cost comment is this request's only
            entry.chunks[-1] = _COST_COMMENT.sub(b"", entry.chunks[-1])
            if not entry.chunks[-1]:
                entry.chunks.pop()
        if entry.whole and len(entry.chunks) > 1:
            entry.chunks = [b"".join(entry.chunks)]
        await self._use._store(entry)


def _gateway_made(name: bytes) -> bool:
    return name.startswith((b"cf-aig-", b"x-tollgate-")) or name == b"content-length"


class _WatchedResponse(UpstreamResponse):
    """An `UpstreamResponse` that remembers whether its stream broke or was closed early."""

    broken = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in UpstreamResponse.chunks(self):
                yield chunk
        except UpstreamStreamBroken:
            self.broken = True
            raise

    def close(self) -> None:
        self.broken = True  # the client went away: what it got is not the whole answer
        UpstreamResponse.close(self)


def build_response_cache(
    redis: Redis | None, key_prefix: str, *, max_entry_bytes: int, memory_max_bytes: int
) -> ResponseCache:
    backend: Backend = (
        RedisBackend(redis, key_prefix, MemoryBackend(memory_max_bytes))
        if redis is not None
        else MemoryBackend(memory_max_bytes)
    )
    return ResponseCache(backend, max_entry_bytes=max_entry_bytes)
