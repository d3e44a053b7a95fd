"""The response cache end to end: official SDKs through a real gateway, the simulator counting
upstream calls and the ledger showing what was charged. In memory and in Redis, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import cloudflare
import httpx
import openai
import pytest
import redis

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import Books, books
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Running:
    gateway: Gateway
    sim: Sim
    redis_prefix: str | None

    @property
    def account_id(self) -> str:
        return self.gateway.account.account_id

    def management(self) -> cloudflare.Cloudflare:
        return cloudflare.Cloudflare(
            api_token=self.gateway.account.token,
            base_url=f"{self.gateway.url}/client/v4",
            max_retries=0,
        )

    def create_gateway(self, gateway_id: str, **settings: Any) -> None:
        self.management().ai_gateway.create(
            account_id=self.account_id, id=gateway_id, **{**REQUIRED_GATEWAY_FIELDS, **settings}
        )

    def update_gateway(self, gateway_id: str, **settings: Any) -> None:
        self.management().ai_gateway.update(
            gateway_id, account_id=self.account_id, **{**REQUIRED_GATEWAY_FIELDS, **settings}
        )

    def openai(self, gateway_id: str, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=self.gateway.account.token,
            base_url=self.gateway.base("openai", gateway=gateway_id),
            max_retries=0,
            default_headers=headers,
        )

    def anthropic(self, gateway_id: str, **headers: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=self.gateway.account.token,
            base_url=self.gateway.base("anthropic", gateway=gateway_id),
            max_retries=0,
            default_headers=headers,
        )

    def upstream_calls(self) -> int:
        return len(self.sim.requests())

    def books(self) -> Books:
        return books(self.gateway)


def usage_entries(before: Books, after: Books) -> int:
    return sum(entry.kind == "usage" for entry in after.since(before))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    yield from fresh_redis_prefix()


def fresh_redis_prefix() -> Iterator[str]:
    """A key prefix of the test's own, and every key under it deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def gateway_env(backend: str, prefix: str) -> dict[str, str]:
    if backend == "memory":
        return {}
    return {"TOLLGATE_REDIS__URL": REDIS_URL, "TOLLGATE_REDIS__KEY_PREFIX": prefix}


@pytest.fixture(
    params=[
        ("sqlite", "memory"),
        ("sqlite", "redis"),
        pytest.param(("postgresql", "memory"), marks=pytest.mark.postgres),
        pytest.param(("postgresql", "redis"), marks=pytest.mark.postgres),
    ],
    ids=lambda p: "-".join(p),
)
def running(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Sim, redis_prefix: str
) -> Iterator[Running]:
    engine, backend = request.param
    env = gateway_env(backend, redis_prefix)
    prefix = redis_prefix if backend == "redis" else None
    database_url = request.getfixturevalue("postgres_url") if engine != "sqlite" else None
    with request.getfixturevalue("start_gateway")(database_url, **env) as gateway:
        yield Running(gateway, sim, prefix)


@pytest.fixture
def simple(start_gateway: Any, sim: Sim) -> Iterator[Running]:
    """One gateway on SQLite, cache in memory: for behaviour that does not depend on either."""
    with start_gateway() as gateway:
        yield Running(gateway, sim, None)


MESSAGES: Any = [{"role": "user", "content": "Name three rivers"}]


def test_a_repeat_is_a_hit_that_costs_nothing(running: Running) -> None:
    running.create_gateway("cached", cache_ttl=300)
    client = running.openai("cached")
    before = running.books()

    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )

    assert first.headers["cf-aig-cache-status"] == "MISS"
    assert second.headers["cf-aig-cache-status"] == "HIT"
    assert second.parse().model_dump() == first.parse().model_dump()
    assert float(first.headers["cf-aig-cost"]) > 0
    assert second.headers["cf-aig-cost"] == "0"
    assert "cf-aig-credits-remaining" not in second.headers
    assert second.headers["cf-aig-log-id"] != first.headers["cf-aig-log-id"]
    assert running.upstream_calls() == 1
    after = running.books()
    assert usage_entries(before, after) == 1  # the hit: no ledger entry
    assert not after.open_holds
    if running.redis_prefix is not None:  # the entry really is in Redis, under our prefix
        client_redis = redis.Redis.from_url(REDIS_URL)
        assert list(client_redis.scan_iter(match=f"{running.redis_prefix}cache:*"))
        client_redis.close()


def test_streams_are_cached_and_replayed_as_streams(running: Running) -> None:
    running.create_gateway("cached", cache_ttl=300)
    before = running.books()

    def stream_text() -> str:
        stream = running.openai("cached").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    first, second = stream_text(), stream_text()
    assert first and second == first
    assert running.upstream_calls() == 1
    # The raw replay (bytes exactly as the first, as the key is the exact body): a stream,
    # marked HIT, without the first request's cost comment.
    url = f"{running.gateway.base('openai', gateway='cached')}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    auth = {"authorization": f"Bearer {running.gateway.account.token}"}
    missed = httpx.post(url, json=body, headers=auth)
    assert missed.headers["cf-aig-cache-status"] == "MISS" and "cf-aig-cost=" in missed.text
    with httpx.stream("POST", url, json=body, headers=auth) as raw:
        assert raw.headers["cf-aig-cache-status"] == "HIT"
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in raw.headers
        text = raw.read().decode()
    assert "cf-aig-cost=" not in text and text.rstrip().endswith("data: [DONE]")
    assert text == _without_cost(missed.text)
    assert running.upstream_calls() == 2
    assert usage_entries(before, running.books()) == 2

    # Anthropic's stream through its own SDK: the same.
    messages: Any = [{"role": "user", "content": "Name three lakes"}]
    texts = []
    for _ in range(2):
        with running.anthropic("cached").messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=messages
        ) as stream:
            texts.append("".join(stream.text_stream))
    assert texts[0] and texts[1] == texts[0]
    assert running.upstream_calls() == 3
    assert usage_entries(before, running.books()) == 3


def test_update_invalidates_with_cache_invalidate_on_update(running: Running) -> None:
    running.create_gateway("keeps", cache_ttl=300)
    running.create_gateway("drops", cache_ttl=300, cache_invalidate_on_update=True)

    def status(gateway_id: str) -> str:
        raw = running.openai(gateway_id).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        return raw.headers["cf-aig-cache-status"]

    assert [status("keeps"), status("keeps"), status("drops"), status("drops")] == [
        "MISS",
        "HIT",
        "MISS",
        "HIT",
    ]
    running.update_gateway("keeps", cache_ttl=600)
    running.update_gateway("drops", cache_ttl=600, cache_invalidate_on_update=True)
    assert status("keeps") == "HIT"
    assert [status("drops"), status("drops")] == ["MISS", "HIT"]
    assert running.upstream_calls() == 3


def test_header_ttl_and_custom_key_cache_on_a_gateway_without_caching(simple: Running) -> None:
    simple.create_gateway("plain")
    plain = simple.openai("plain")
    raw = plain.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "cf-aig-cache-status" not in raw.headers  # caching off: not looked up at all

    with_ttl = simple.openai("plain", **{"cf-aig-cache-ttl": "120"})
    statuses = [
        with_ttl.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        ).headers["cf-aig-cache-status"]
        for _ in range(2)
    ]
    assert statuses == ["MISS", "HIT"]

    keyed = simple.openai("plain", **{"cf-aig-cache-key": "weather-today"})
    first = keyed.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Oslo?"}]
    )
    # Another body, the same custom key: the key decides, so the first answer comes back.
    second = keyed.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Rome?"}]
    )
    assert first.headers["cf-aig-cache-status"] == "MISS"
    assert second.headers["cf-aig-cache-status"] == "HIT"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert "Oslo" in (first.parse().choices[0].message.content or "")
    assert simple.upstream_calls() == 3


def test_skip_cache_neither_reads_nor_writes(simple: Running) -> None:
    simple.create_gateway("cached", cache_ttl=300)
    skipping = simple.openai("cached", **{"cf-aig-skip-cache": "true"})
    for _ in range(2):
        raw = skipping.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert "cf-aig-cache-status" not in raw.headers
    raw = simple.openai("cached").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.headers["cf-aig-cache-status"] == "MISS"  # the skipped ones stored nothing
    assert simple.upstream_calls() == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cf-aig-cache-ttl", "30"),
        ("cf-aig-cache-ttl", "2592001"),
        ("cf-aig-cache-ttl", "an hour"),
        ("cf-aig-skip-cache", "sometimes"),
        ("cf-aig-cache-key", "k" * 1025),
    ],
)
def test_bad_cache_headers_are_a_400_and_change_nothing(
    simple: Running, name: str, value: str
) -> None:
    simple.create_gateway("cached", cache_ttl=300)
    before = simple.books()
    with pytest.raises(openai.BadRequestError) as refused:
        simple.openai("cached", **{name: value}).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_header"
    assert name in error["message"] and error["param"] == name
    with pytest.raises(anthropic.BadRequestError) as anthropic_refused:
        simple.anthropic("cached", **{name: value}).messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=MESSAGES
        )
    assert name in anthropic_refused.value.message
    assert simple.upstream_calls() == 0
    after = simple.books()
    assert after.entries == before.entries and not after.holds


def test_errors_and_broken_streams_are_not_stored(simple: Running) -> None:
    simple.create_gateway("cached", cache_ttl=300)
    failing = simple.openai("cached", **{"x-sim-error": "500"})
    with pytest.raises(openai.InternalServerError):
        failing.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # The same request (x-sim-* headers are not part of the key): the error was not stored.
    raw = simple.openai("cached").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.headers["cf-aig-cache-status"] == "MISS"

    stream_body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    url = f"{simple.gateway.base('openai', gateway='cached')}/chat/completions"
    auth = {"authorization": f"Bearer {simple.gateway.account.token}"}
    broken = httpx.post(url, json=stream_body, headers={**auth, "x-sim-drop-after": "2"})
    assert broken.status_code == 200 and "upstream_stream_broken" in broken.text
    whole = httpx.post(url, json=stream_body, headers=auth)
    assert whole.headers["cf-aig-cache-status"] == "MISS"  # the broken one was not stored
    assert "upstream_stream_broken" not in whole.text
    again = httpx.post(url, json=stream_body, headers=auth)
    assert again.headers["cf-aig-cache-status"] == "HIT" and again.text == _without_cost(whole.text)
    assert simple.upstream_calls() == 4


def _without_cost(stream: str) -> str:
    return "".join(
        part + "\n\n" for part in stream.split("\n\n") if part and not part.startswith(": ")
    )


def test_unified_api_answers_are_cached_per_surface(simple: Running) -> None:
    simple.create_gateway("cached", cache_ttl=300)
    before = simple.books()
    compat = openai.OpenAI(
        api_key=simple.gateway.account.token,
        base_url=f"{simple.gateway.url}/v1/{simple.account_id}/cached/compat",
        max_retries=0,
    )
    # Translated (OpenAI in, Anthropic out), streamed and not.
    replies = [
        compat.chat.completions.with_raw_response.create(
            model="anthropic/claude-sonnet-4-6", messages=MESSAGES, max_tokens=60
        )
        for _ in range(2)
    ]
    assert [r.headers["cf-aig-cache-status"] for r in replies] == ["MISS", "HIT"]
    assert replies[1].parse().model_dump() == replies[0].parse().model_dump()
    streamed = []
    for _ in range(2):
        stream = compat.chat.completions.create(
            model="anthropic/claude-sonnet-4-6", messages=MESSAGES, max_tokens=60, stream=True
        )
        streamed.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert streamed[0] and streamed[1] == streamed[0]

    # The REST surface, through the anthropic SDK, gateway chosen by header.
    rest = anthropic.Anthropic(
        api_key=simple.gateway.account.token,
        base_url=f"{simple.gateway.url}/client/v4/accounts/{simple.account_id}/ai",
        max_retries=0,
        default_headers={"cf-aig-gateway-id": "cached"},
    )
    answers = [
        rest.messages.with_raw_response.create(
            model="anthropic/claude-sonnet-4-6", max_tokens=60, messages=MESSAGES
        )
        for _ in range(2)
    ]
    assert [a.headers["cf-aig-cache-status"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].parse().content == answers[0].parse().content
    assert simple.upstream_calls() == 3
    assert usage_entries(before, simple.books()) == 3


def test_byok_answers_are_kept_apart_by_key(simple: Running) -> None:
    """A client's own provider key pays for its answers: another key does not get them."""
    simple.create_gateway("cached", cache_ttl=300)

    def status(key: str) -> str:
        client = openai.OpenAI(
            api_key=key,
            base_url=simple.gateway.base("openai", gateway="cached"),
            max_retries=0,
            default_headers={"cf-aig-authorization": f"Bearer {simple.gateway.account.token}"},
        )
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        return raw.headers["cf-aig-cache-status"]

    assert [status("sk-team-a"), status("sk-team-a"), status("sk-team-b")] == [
        "MISS",
        "HIT",
        "MISS",
    ]
    headers = [r["headers"] for r in simple.sim.requests()]
    auth = [{k.lower(): v for k, v in h.items()}["authorization"] for h in headers]  # type: ignore[union-attr]
    assert auth == ["Bearer sk-team-a", "Bearer sk-team-b"]


def test_cached_answers_are_json_the_sdk_reads(simple: Running) -> None:
    """A hit on a non-streamed answer carries a correct content-length."""
    simple.create_gateway("cached", cache_ttl=300)
    url = f"{simple.gateway.base('openai', gateway='cached')}/chat/completions"
    auth = {"authorization": f"Bearer {simple.gateway.account.token}"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    first = httpx.post(url, json=body, headers=auth)
    hit = httpx.post(url, json=body, headers=auth)
    assert hit.headers["cf-aig-cache-status"] == "HIT"
    assert int(hit.headers["content-length"]) == len(hit.content)
    assert json.loads(hit.content) == json.loads(first.content)
