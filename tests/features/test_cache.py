"""The response cache's parts: its headers, its key, its entries and where they are kept."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from tollgate.errors import InvalidRequest
from tollgate.features.context import RequestContext
from tollgate.features.response_cache import (
    NO_OPTIONS,
    CacheOptions,
    Entry,
    MemoryBackend,
    RedisBackend,
    ResponseCache,
    cache_key,
    cache_options,
    effective_ttl,
    key_parts,
)
from tollgate.settings import SettingsError, load_settings
from tollgate.store import GatewayRecord

REDIS_URL = "redis://127.0.0.1:6379/0"
STAMP = datetime(2026, 11, 29, tzinfo=UTC)


def gateway(modified: datetime = STAMP, **config: Any) -> GatewayRecord:
    return GatewayRecord("a" * 32, "gw", config, False, STAMP, modified)


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_no_cache_headers_read_as_no_options() -> None:
    assert cache_options(headers(content_type="application/json")) is NO_OPTIONS


def test_cache_headers_are_read_with_their_legacy_names() -> None:
    got = cache_options(headers(cf_aig_cache_ttl="120", cf_aig_skip_cache="TRUE"))
    assert got == CacheOptions(ttl=120, skip=True, key=None)
    assert cache_options(headers(cf_cache_ttl="3600", cf_skip_cache="false")) == CacheOptions(
        ttl=3600
    )
    assert cache_options(headers(cf_aig_cache_key="my-key")) == CacheOptions(key="my-key")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("cf-aig-cache-ttl", "59", "60 to 2592000"),
        ("cf-aig-cache-ttl", "2592001", "60 to 2592000"),
        ("cf-aig-cache-ttl", "ten", "60 to 2592000"),
        ("cf-aig-cache-ttl", "-60", "60 to 2592000"),
        ("cf-aig-skip-cache", "yes", "'true' or 'false'"),
        ("cf-aig-cache-key", "k" * 1025, "1 to 1024 bytes"),
        ("cf-aig-cache-key", "", "1 to 1024 bytes"),
    ],
)
def test_bad_cache_headers_are_a_400_naming_the_header(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        cache_options([(name.encode(), value.encode())])
    assert refused.value.status == 400 and refused.value.code == "invalid_header"
    assert refused.value.param == name
    assert name in refused.value.message and expected in refused.value.message


def test_the_cache_key_may_be_exactly_one_kilobyte() -> None:
    assert cache_options(headers(cf_aig_cache_key="k" * 1024)).key == "k" * 1024


def test_ttl_comes_from_the_header_then_the_gateway_then_a_custom_key() -> None:
    on, off = gateway(cache_ttl=600), gateway(cache_ttl=0)
    assert effective_ttl(NO_OPTIONS, on) == 600
    assert effective_ttl(NO_OPTIONS, off) is None
    assert effective_ttl(NO_OPTIONS, gateway(cache_ttl=None)) is None
    assert effective_ttl(CacheOptions(ttl=90), off) == 90
    assert effective_ttl(CacheOptions(ttl=90), on) == 90
    assert effective_ttl(CacheOptions(key="k"), off) == 300  # Cloudflare's 5 minutes
    assert effective_ttl(CacheOptions(key="k"), on) == 600
    assert effective_ttl(CacheOptions(ttl=90, skip=True), on) is None


def parts(body: bytes = b"{}", credential: str | None = None, **extra: str) -> list[bytes]:
    return key_parts(
        endpoint="native:openai/chat/completions",
        method="POST",
        query="",
        credential=credential,
        headers=headers(**extra),
        body=body,
    )


def test_the_key_covers_what_decides_the_answer() -> None:
    gw = gateway(cache_ttl=60)
    base = cache_key(gw, parts())
    assert base.startswith(f"{'a' * 32}:gw:")
    assert cache_key(gw, parts()) == base
    assert cache_key(gw, parts(user_agent="x", cf_aig_metadata="{}")) == base  # irrelevant
    different = [
        parts(body=b'{"a":1}'),
        parts(credential="sk-client-key"),
        parts(anthropic_version="2023-06-01"),
        parts(cf_aig_byok_alias="team-b"),
    ]
    keys = {cache_key(gw, p) for p in different}
    assert base not in keys and len(keys) == len(different)
    recreated = GatewayRecord(gw.account_id, gw.id, gw.config, False, STAMP + timedelta(1), STAMP)
    assert cache_key(recreated, parts()) != base


def test_an_update_changes_the_key_only_with_cache_invalidate_on_update() -> None:
    later = STAMP + timedelta(seconds=1)
    keeps = {"cache_ttl": 60, "cache_invalidate_on_update": False}
    assert cache_key(gateway(**keeps), parts()) == cache_key(gateway(later, **keeps), parts())
    drops = {"cache_ttl": 60, "cache_invalidate_on_update": True}
    assert cache_key(gateway(**drops), parts()) != cache_key(gateway(later, **drops), parts())


def test_entries_survive_encoding() -> None:
    entry = Entry(
        200, [(b"content-type", b"text/event-stream")], [b"data: 1\n\n", b"\n\x00"], False
    )
    assert Entry.decode(entry.encode()) == entry
    empty = Entry(204, [], [], True)
    assert Entry.decode(empty.encode()) == empty


async def test_memory_backend_expires_and_evicts_least_recently_used() -> None:
    backend = MemoryBackend(max_bytes=3000)
    big = [b"x" * 1000]
    for name in "abc":
        await backend.set(name, Entry(200, [], big, True), ttl=60)
    assert backend.used == 3000
    assert await backend.get("a") is not None  # now the most recently used
    await backend.set("d", Entry(200, [], big, True), ttl=60)
    assert await backend.get("b") is None and await backend.get("a") is not None
    assert backend.used == 3000
    await backend.set("too-big", Entry(200, [], [b"x" * 4000], True), ttl=60)
    assert await backend.get("too-big") is None and backend.used == 3000
    await backend.set("short", Entry(200, [], [b"x"], True), ttl=0)
    await asyncio.sleep(0.01)
    assert await backend.get("short") is None


async def test_redis_backend_round_trips_and_expires() -> None:
    client = Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex}:"
    try:
        backend = RedisBackend(client, prefix, MemoryBackend(max_bytes=10_000))
        entry = Entry(200, [(b"x-upstream", b"1")], [b'{"ok":true}'], True)
        await backend.set("k", entry, ttl=60)
        assert await backend.get("k") == entry
        assert await backend.get("other") is None
        assert 0 < await client.ttl(f"{prefix}cache:k") <= 60
        await client.set(f"{prefix}cache:garbled", b"not an entry\nat all")
        assert await backend.get("garbled") is None  # a miss, not an error
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_an_unreachable_redis_falls_back_to_this_process() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        backend = RedisBackend(client, "unused:", MemoryBackend(max_bytes=10_000))
        assert await backend.get("k") is None  # a miss, not an error
        entry = Entry(200, [], [b"x"], True)
        await backend.set("k", entry, ttl=60)  # logged, not raised: kept in this process
        assert await backend.get("k") == entry
    finally:
        await client.aclose()


async def test_a_custom_key_replaces_the_body_but_keeps_stream_and_whole_apart() -> None:
    cache = ResponseCache(MemoryBackend(max_bytes=10_000), max_entry_bytes=10_000)
    gw = gateway(cache_ttl=60)
    keyed = CacheOptions(key="shared")
    first = await cache.open(keyed, gw, "POST", parts(body=b'{"messages":[1]}'))
    assert first.headers and not await first.served(_ignore, [], _ctx())
    stored = Entry(200, [], [b"answer"], True)
    await cache.backend.set(first._key, stored, ttl=60)
    other_body = await cache.open(keyed, gw, "POST", parts(body=b'{"messages":[2]}'))
    assert other_body._hit == stored
    streamed = await cache.open(keyed, gw, "POST", parts(body=b'{"messages":[1],"stream":true}'))
    assert streamed._hit is None
    not_cached = await cache.open(NO_OPTIONS, gateway(cache_ttl=0), "POST", parts())
    assert not_cached.headers == [] and not_cached.capture(_ignore) is _ignore


async def _ignore(message: object) -> None:
    raise AssertionError("nothing is sent for a miss")


def _ctx() -> RequestContext:
    return RequestContext("a" * 32, "gw")


def test_redis_and_cache_settings_are_read_and_checked() -> None:
    settings = load_settings(
        env={"TOLLGATE_REDIS__URL": REDIS_URL, "TOLLGATE_CACHE__MAX_ENTRY_BYTES": "4096"}
    )
    assert settings.redis.url == REDIS_URL and settings.redis.key_prefix == "tollgate:"
    assert settings.cache.max_entry_bytes == 4096
    assert load_settings(env={}).redis.url is None
    with pytest.raises(SettingsError) as refused:
        load_settings(env={"TOLLGATE_REDIS__URL": "http://127.0.0.1:6379"})
    assert "redis.url" in str(refused.value) and "TOLLGATE_REDIS__URL" in str(refused.value)
