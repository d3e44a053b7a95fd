"""Request limits on the data plane (tollgate/request_limits.py): header count and size (431),
body size (413, also chunked and on the Universal endpoint), JSON nesting depth and message count
(400). For each limit a request just under it is served, and one just over it is refused in the
format of the endpoint called: it reaches no upstream, bills nothing, and leaves no gateway."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_dataplane_bad_input import gateway_count
from tollgate.billing.ledger import check_invariants
from tollgate.store import Store
from tollgate.store import ledger as ledger_repo

MAX_HEADERS = 20
MAX_HEADER_BYTES = 2048
MAX_DEPTH = 8
MAX_MESSAGES = 5
MAX_BODY = 2048
LIMITS = {
    "TOLLGATE_SERVER__MAX_HEADER_COUNT": str(MAX_HEADERS),
    "TOLLGATE_SERVER__MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "TOLLGATE_SERVER__MAX_JSON_DEPTH": str(MAX_DEPTH),
    "TOLLGATE_SERVER__MAX_MESSAGES": str(MAX_MESSAGES),
    "TOLLGATE_SERVER__MAX_BODY_BYTES": str(MAX_BODY),
}
MODEL = "gpt-4o-mini"


@pytest.fixture
def limited(start_gateway: Callable[..., AbstractContextManager[Gateway]]) -> Iterator[Gateway]:
    with start_gateway(**LIMITS) as gateway:
        yield gateway


def books(gateway: Gateway, account_id: str | None = None) -> tuple[int, int, int]:
    """An account's balance, held amount and ledger entries (the invariants checked too)."""
    gateway.sync_books()

    async def read() -> tuple[int, int, int]:
        store = Store(gateway.database_url)
        try:
            account = account_id or gateway.account.account_id
            snapshot = await check_invariants(store, account)
            entries = await ledger_repo.list_entries(store, account, limit=10_000)
            return snapshot.balance_nanos, snapshot.held_nanos, len(entries)
        finally:
            await store.close()

    return asyncio.run(read())


class Refusals:
    """Asserts that what happened inside the block reached nothing: no upstream call, no
    ledger entry or hold, no gateway created."""

    def __init__(self, gateway: Gateway, sim: Sim) -> None:
        self.gateway, self.sim = gateway, sim

    def __enter__(self) -> Refusals:
        self.sim.clear()
        self.before = books(self.gateway)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert self.sim.requests() == [], "a refused request reached the upstream"
        assert books(self.gateway) == self.before, "a refused request changed the books"
        assert gateway_count(self.gateway) == 0, "a refused request left a gateway behind"


def sdk(gateway: Gateway, provider: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base(provider), max_retries=0
    )


def conversation(count: int) -> list[Any]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
        for i in range(count - 1)
    ] + [{"role": "user", "content": "last turn"}]


def nested(levels: int) -> object:
    """A JSON value `levels` objects deep."""
    value: object = 1
    for _ in range(levels):
        value = {"k": value}
    return value


# --- messages ---------------------------------------------------------------------------------


def test_messages_at_the_limit_are_served_one_more_is_400_on_every_surface(
    limited: Gateway, sim: Sim
) -> None:
    with Refusals(limited, sim):
        with pytest.raises(openai.BadRequestError) as native:
            sdk(limited).chat.completions.create(model=MODEL, messages=conversation(6))
        with pytest.raises(openai.BadRequestError) as compat:
            sdk(limited, "compat").chat.completions.create(
                model="anthropic/claude-sonnet-4-6", messages=conversation(6)
            )
        claude = anthropic.Anthropic(
            api_key=limited.account.token, base_url=limited.base("anthropic"), max_retries=0
        )
        with pytest.raises(anthropic.BadRequestError) as messages_api:
            claude.messages.create(
                model="claude-sonnet-4-6", max_tokens=10, messages=conversation(6)
            )
        gemini = httpx.post(
            f"{limited.base('google-ai-studio')}/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"cf-aig-authorization": f"Bearer {limited.account.token}"},
            json={"contents": [{"role": "user", "parts": [{"text": "x"}]}] * 6},
        )
    for caught in (native.value, compat.value):
        assert caught.code == "too_many_messages" and caught.param == "messages"
        assert "at most 5" in caught.message and "server.max_messages" in caught.message
    assert messages_api.value.body["error"]["code"] == "too_many_messages"  # type: ignore[index]
    assert gemini.status_code == 400, gemini.text
    error = gemini.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"] == [{"reason": "too_many_messages"}]

    reply = sdk(limited).chat.completions.create(model=MODEL, messages=conversation(5))
    assert reply.choices[0].message.content
    assert len(sim.requests()) == 1


def test_message_lists_in_universal_steps_count_too(limited: Gateway, sim: Sim) -> None:
    step = {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": {"authorization": f"Bearer {limited.account.token}"},
        "query": {"model": MODEL, "messages": conversation(6)},
    }
    url = f"{limited.url}/v1/{limited.account.account_id}/default"
    with Refusals(limited, sim):
        refused = httpx.post(url, json=[step])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "too_many_messages"
    assert refused.json()["error"]["param"] == "[0].query.messages"

    step["query"] = {"model": MODEL, "messages": conversation(5)}
    assert httpx.post(url, json=[step]).status_code == 200


# --- JSON depth -------------------------------------------------------------------------------


def test_json_nested_at_the_limit_is_served_one_level_more_is_400(
    limited: Gateway, sim: Sim
) -> None:
    # The body is level 1, so {"x": nested(n)} is n + 1 levels deep.
    with Refusals(limited, sim), pytest.raises(openai.BadRequestError) as caught:
        sdk(limited).chat.completions.create(
            model=MODEL, messages=conversation(1), extra_body={"x": nested(MAX_DEPTH)}
        )
    assert caught.value.status_code == 400 and caught.value.code == "json_too_deep"
    assert "more than 8 levels" in caught.value.message

    reply = sdk(limited).chat.completions.create(
        model=MODEL, messages=conversation(1), extra_body={"x": nested(MAX_DEPTH - 1)}
    )
    assert reply.choices[0].message.content
    assert json.loads(str(sim.requests()[-1]["body"]))["x"] == nested(MAX_DEPTH - 1)


def test_brackets_inside_strings_do_not_count_as_nesting(limited: Gateway, sim: Sim) -> None:
    text = '[[[[{{{{ ]]]] }} \\ " {[' * 20
    reply = sdk(limited).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], extra_body={"x": nested(7)}
    )
    assert reply.choices[0].message.content


def test_json_depth_on_the_universal_endpoint_counts_from_the_body(
    limited: Gateway, sim: Sim
) -> None:
    # [ step { query { "x": nested } } ]: the array is level 1, the step 2, the query 3.
    def body(levels: int) -> list[object]:
        query = {"model": MODEL, "messages": conversation(1), "x": nested(levels)}
        return [{"provider": "openai", "endpoint": "chat/completions", "query": query}]

    url = f"{limited.url}/v1/{limited.account.account_id}/default"
    auth = {"cf-aig-authorization": f"Bearer {limited.account.token}"}
    with Refusals(limited, sim):
        refused = httpx.post(url, json=body(MAX_DEPTH - 2), headers=auth)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "json_too_deep"
    assert httpx.post(url, json=body(MAX_DEPTH - 3), headers=auth).status_code == 200


# --- body size --------------------------------------------------------------------------------


def padded_chat(size: int) -> bytes:
    """A chat request of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = json.dumps({"model": MODEL, "messages": conversation(1)}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def chunked(body: bytes) -> Iterator[bytes]:
    """Sent with transfer-encoding: chunked and no content-length."""
    for start in range(0, len(body), 500):
        yield body[start : start + 500]


def test_chunked_bodies_are_held_to_the_size_limit(limited: Gateway, sim: Sim) -> None:
    url = f"{limited.base('openai')}/chat/completions"
    headers = {
        "authorization": f"Bearer {limited.account.token}",
        "content-type": "application/json",
    }
    with Refusals(limited, sim):
        refused = httpx.post(url, content=chunked(padded_chat(MAX_BODY + 1)), headers=headers)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["code"] == "request_too_large"
    assert "content-length" not in refused.request.headers

    served = httpx.post(url, content=chunked(padded_chat(MAX_BODY)), headers=headers)
    assert served.status_code == 200, served.text


def test_the_universal_endpoint_holds_chunked_bodies_to_the_size_limit(
    limited: Gateway, sim: Sim
) -> None:
    def steps(size: int) -> bytes:
        step = {
            "provider": "openai",
            "endpoint": "chat/completions",
            "query": {"model": MODEL, "messages": conversation(1)},
        }
        body = json.dumps([step]).encode()
        return body + b" " * (size - len(body))

    url = f"{limited.url}/v1/{limited.account.account_id}/default"
    headers = {"cf-aig-authorization": f"Bearer {limited.account.token}"}
    with Refusals(limited, sim):
        refused = httpx.post(url, content=chunked(steps(MAX_BODY + 1)), headers=headers)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
    served = httpx.post(url, content=chunked(steps(MAX_BODY)), headers=headers)
    assert served.status_code == 200, served.text


# --- headers ----------------------------------------------------------------------------------


def raw_post(gateway: Gateway, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """POST with exactly these headers (HTTP clients add their own); the raw response."""
    target = urlsplit(gateway.url)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    with socket.create_connection((target.hostname, target.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def status_and_json(response: bytes) -> tuple[int, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else None


def exact_headers(gateway: Gateway, count: int, size: int, body: bytes) -> list[tuple[str, str]]:
    """`count` headers whose names and values add up to `size` bytes."""
    headers = [
        ("host", "gateway"),
        ("authorization", f"Bearer {gateway.account.token}"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("connection", "close"),
        ("anthropic-version", "2023-06-01"),
    ]
    headers += [(f"x-pad-{i:02d}", "") for i in range(count - len(headers))]
    used = sum(len(name) + len(value) for name, value in headers)
    assert used <= size
    name, _ = headers[-1]
    headers[-1] = (name, "v" * (size - used))
    return headers


@pytest.mark.parametrize(
    ("provider", "path", "body"),
    [
        ("openai", "chat/completions", {"model": MODEL, "messages": conversation(1)}),
        (
            "anthropic",
            "v1/messages",
            {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": conversation(1)},
        ),
    ],
)
def test_header_count_and_size_at_the_limit_are_served_over_is_431(
    limited: Gateway, sim: Sim, provider: str, path: str, body: dict[str, object]
) -> None:
    raw = json.dumps(body).encode()
    url = f"/v1/{limited.account.account_id}/default/{provider}/{path}"
    with Refusals(limited, sim):
        too_many = raw_post(limited, url, exact_headers(limited, MAX_HEADERS + 1, 1000, raw), raw)
        too_big = raw_post(limited, url, exact_headers(limited, 10, MAX_HEADER_BYTES + 1, raw), raw)
    for response, what in ((too_many, "21 headers"), (too_big, "2049 bytes")):
        status, error = status_and_json(response)
        assert status == 431, response[:300]
        assert error["error"]["code"] == "request_headers_too_large"
        assert what in error["error"]["message"]
        if provider == "anthropic":  # Anthropic's error shape and type
            assert error["type"] == "error" and error["error"]["type"] == "request_too_large"
        else:
            assert error["error"]["type"] == "invalid_request_error"

    at_count = raw_post(limited, url, exact_headers(limited, MAX_HEADERS, 1000, raw), raw)
    at_size = raw_post(limited, url, exact_headers(limited, 10, MAX_HEADER_BYTES, raw), raw)
    assert status_and_json(at_count)[0] == 200, at_count[:300]
    assert status_and_json(at_size)[0] == 200, at_size[:300]
    assert len(sim.requests()) == 2


def test_defaults_leave_room_for_real_clients(gateway: Gateway, sim: Sim) -> None:
    """Default limits: an SDK request with extra headers and a long conversation is served."""
    client = openai.OpenAI(
        api_key=gateway.account.token,
        base_url=gateway.base("openai"),
        max_retries=0,
        default_headers={f"x-trace-{i}": "t" * 100 for i in range(40)},
    )
    reply = client.chat.completions.create(model=MODEL, messages=conversation(2000))
    assert reply.choices[0].message.content
