"""What the SDK sends, without a server: gateway options become exactly the `cf-aig-*` headers
the gateway reads, bad options and arguments are refused locally (naming the option) before any
request, and `models` reads every page. The client sends through an `httpx.MockTransport` that
records what would have gone out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tollgate.sdk import AI, AsyncAI

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "tg_test_token"
CHAT = {"id": "c", "object": "chat.completion", "choices": []}


class Recorder:
    """A transport that answers every request like `/ai/run` would, and keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = {"state": "Completed", "result": CHAT, "gatewayMetadata": {"keySource": "Unified"}}
        return httpx.Response(200, json=body, headers={"cf-aig-log-id": "log-1"})

    def client(self) -> AI:
        http = httpx.Client(transport=httpx.MockTransport(self.handle))
        return AI(ACCOUNT, TOKEN, "http://gw.test/", http_client=http)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def cf_headers(request: httpx.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.startswith("cf-aig-")}


def test_every_option_maps_to_its_cf_aig_header() -> None:
    recorder = Recorder()
    recorder.client().run(
        "openai/gpt-4o-mini",
        {"prompt": "hi"},
        gateway={
            "id": "my-gateway",
            "skip_cache": True,
            "cache_ttl": 3600,
            "cache_key": "greeting",
            "metadata": {"user": "u1", "n": 2, "ok": False, "ratio": 0.5, "none": None},
            "collect_log": False,
            "event_id": "event-7",
            "request_timeout_ms": 1500,
            "retries": {"max_attempts": 3, "retry_delay_ms": 250, "backoff": "exponential"},
        },
    )
    request = recorder.last
    assert request.url == f"http://gw.test/client/v4/accounts/{ACCOUNT}/ai/run"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert cf_headers(request) == {
        "cf-aig-gateway-id": "my-gateway",
        "cf-aig-skip-cache": "true",
        "cf-aig-cache-ttl": "3600",
        "cf-aig-cache-key": "greeting",
        "cf-aig-metadata": '{"user":"u1","n":2,"ok":false,"ratio":0.5,"none":null}',
        "cf-aig-collect-log": "false",
        "cf-aig-event-id": "event-7",
        "cf-aig-request-timeout": "1500",
        "cf-aig-max-attempts": "3",
        "cf-aig-retry-delay": "250",
        "cf-aig-backoff": "exponential",
    }
    assert json.loads(request.content) == {"model": "openai/gpt-4o-mini", "input": {"prompt": "hi"}}


def test_no_options_means_the_default_gateway_and_no_other_header() -> None:
    recorder = Recorder()
    answer = recorder.client().run("openai/gpt-4o-mini", {"messages": [{"role": "user"}]})
    assert answer == CHAT  # the envelope's result
    assert cf_headers(recorder.last) == {"cf-aig-gateway-id": "default"}


def test_embedding_inputs_go_to_ai_run_in_the_envelope() -> None:
    recorder = Recorder()
    client = recorder.client()
    client.run("openai/text-embedding-3-small", {"text": ["a", "b"]}, gateway={"id": "emb"})
    request = recorder.last
    assert request.url == f"http://gw.test/client/v4/accounts/{ACCOUNT}/ai/run"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["cf-aig-gateway-id"] == "emb"
    body = json.loads(request.content)
    assert body == {"model": "openai/text-embedding-3-small", "input": {"text": ["a", "b"]}}


def test_non_ascii_metadata_and_event_id_travel_intact() -> None:
    recorder = Recorder()
    recorder.client().run(
        "openai/gpt-4o-mini",
        {"prompt": "hi"},
        gateway={"metadata": {"city": "Zürich"}, "event_id": "évé"},
    )
    raw = dict(recorder.last.headers.raw)
    assert json.loads(raw[b"cf-aig-metadata"]) == {"city": "Zürich"}
    assert raw[b"cf-aig-event-id"] == "évé".encode()


BAD_OPTIONS: list[tuple[Any, type[Exception], str]] = [
    ({"ttl": 60}, ValueError, "unknown gateway option 'ttl'"),
    ({"skipCache": True}, ValueError, "did you mean 'skip_cache'?"),
    ({"cacheTtl": 60}, ValueError, "did you mean 'cache_ttl'?"),
    ("default", TypeError, "gateway must be a dict"),
    ({"id": 7}, TypeError, "'id' must be a string"),
    ({"id": "Not/A/Gateway"}, ValueError, "'id' must be 1 to 64"),
    ({"skip_cache": "yes"}, TypeError, "'skip_cache' must be True or False"),
    ({"collect_log": 1}, TypeError, "'collect_log' must be True or False"),
    ({"cache_ttl": "60"}, TypeError, "'cache_ttl' must be an int"),
    ({"cache_ttl": True}, TypeError, "'cache_ttl' must be an int"),
    ({"cache_ttl": -1}, ValueError, "'cache_ttl' must be at least 0"),
    ({"cache_key": 5}, TypeError, "'cache_key' must be a string"),
    ({"cache_key": "a\r\nb"}, ValueError, "'cache_key' must be a non-empty string"),
    ({"event_id": ""}, ValueError, "'event_id' must be a non-empty string"),
    ({"request_timeout_ms": 1.5}, TypeError, "'request_timeout_ms' must be an int"),
    ({"request_timeout_ms": 0}, ValueError, "'request_timeout_ms' must be at least 1"),
    ({"metadata": "user=1"}, TypeError, "'metadata' must be a dict"),
    ({"metadata": [("user", 1)]}, TypeError, "'metadata' must be a dict"),
    ({"metadata": {"nested": {"a": 1}}}, TypeError, "value for 'nested'"),
    ({"metadata": {1: "x"}}, TypeError, "'metadata' keys must be strings"),
    ({"retries": 3}, TypeError, "'retries' must be a dict"),
    ({"retries": {"max_attempts": 6}}, ValueError, "'retries.max_attempts' must be from 1 to 5"),
    ({"retries": {"max_attempts": "2"}}, TypeError, "'retries.max_attempts' must be an int"),
    ({"retries": {"retry_delay_ms": -5}}, ValueError, "'retries.retry_delay_ms' must be at"),
    ({"retries": {"backoff": "random"}}, ValueError, "'retries.backoff' must be one of"),
    ({"retries": {"backoff": 2}}, TypeError, "'retries.backoff' must be a string"),
    ({"retries": {"maxAttempts": 2}}, ValueError, "did you mean 'max_attempts'?"),
]


@pytest.mark.parametrize(("options", "error", "says"), BAD_OPTIONS)
def test_bad_options_are_refused_before_any_request(
    options: Any, error: type[Exception], says: str
) -> None:
    recorder = Recorder()
    with pytest.raises(error) as caught:
        recorder.client().run("openai/gpt-4o-mini", {"prompt": "hi"}, gateway=options)
    assert says in str(caught.value)
    assert recorder.requests == []


BAD_CALLS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"model": 5}, TypeError, "model must be a string"),
    ({"model": ""}, ValueError, "does not name its provider"),
    ({"model": "gpt-4o-mini"}, ValueError, "does not name its provider"),
    ({"model": "openai/"}, ValueError, "does not name its provider"),
    ({"model": "/gpt-4o-mini"}, ValueError, "does not name its provider"),
    ({"model": "@cf/meta/llama-3.1-8b-instruct"}, ValueError, "does not name its provider"),
    ({"inputs": "hi"}, TypeError, "inputs must be a dict"),
    ({"inputs": {"prompt": "hi", "stream": True}}, ValueError, "pass stream=True"),
    ({"stream": "yes"}, TypeError, "stream must be True or False"),
    ({"inputs": {"input": "x"}, "stream": True}, ValueError, "embeddings are not streamed"),
    ({"inputs": {"input": "x", "text": "y"}}, ValueError, "not both"),
]


@pytest.mark.parametrize(("call", "error", "says"), BAD_CALLS)
def test_bad_run_arguments_are_refused_before_any_request(
    call: dict[str, Any], error: type[Exception], says: str
) -> None:
    recorder = Recorder()
    arguments = {"model": "openai/gpt-4o-mini", "inputs": {"prompt": "hi"}, **call}
    with pytest.raises(error, match=says):
        recorder.client().run(**arguments)
    assert recorder.requests == []


def test_gateway_methods_check_their_arguments_locally() -> None:
    recorder = Recorder()
    client = recorder.client()
    with pytest.raises(ValueError, match="gateway id must be 1 to 64"):
        client.gateway("Bad Id")
    gateway = client.gateway("default")
    with pytest.raises(TypeError, match="steps must be a step dict or a list"):
        gateway.run("openai")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must not be empty"):
        gateway.run([])
    with pytest.raises(TypeError, match=r"steps\[1\] must be a dict"):
        gateway.run([{"provider": "openai"}, "anthropic"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="the gateway is the one named in ai.gateway"):
        gateway.run({"provider": "openai"}, gateway={"id": "other"})
    with pytest.raises(ValueError, match="needs at least one of feedback, score or metadata"):
        gateway.patch_log("log-1")
    with pytest.raises(TypeError, match="score must be a number"):
        gateway.patch_log("log-1", score="high")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata must be a dict"):
        gateway.patch_log("log-1", metadata=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_id must not be empty"):
        gateway.get_log("")
    with pytest.raises(ValueError, match="provider slug"):
        gateway.get_url("open ai")
    with pytest.raises(TypeError, match="search must be a string"):
        client.models(search=3)  # type: ignore[arg-type]
    assert recorder.requests == []


def test_universal_step_header_values_are_sent_as_text_and_steps_are_not_changed() -> None:
    recorder = Recorder()
    step = {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": {"cf-aig-skip-cache": True, "cf-aig-cache-ttl": 60, "cf-aig-metadata": {"a": 1}},
        "query": {"model": "gpt-4o-mini"},
    }
    recorder.client().gateway("gw").run(step, gateway={"event_id": "e1"})
    request = recorder.last
    assert request.url == f"http://gw.test/v1/{ACCOUNT}/gw"
    assert request.headers["cf-aig-event-id"] == "e1"
    sent = json.loads(request.content)
    assert sent[0]["headers"] == {
        "cf-aig-skip-cache": "true",
        "cf-aig-cache-ttl": "60",
        "cf-aig-metadata": '{"a":1}',
    }
    assert step["headers"]["cf-aig-skip-cache"] is True  # type: ignore[index]


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="account_id must be 32 lowercase hex"):
        AI("acct", TOKEN)
    with pytest.raises(TypeError, match="token must be a non-empty string"):
        AI(ACCOUNT, "")
    with pytest.raises(ValueError, match="base_url must be an http"):
        AI(ACCOUNT, TOKEN, "127.0.0.1:8787")
    with httpx.Client() as sync_http, pytest.raises(TypeError, match="use AI for an httpx"):
        AsyncAI(ACCOUNT, TOKEN, http_client=sync_http)  # type: ignore[arg-type]
    async_http = httpx.AsyncClient()
    with pytest.raises(TypeError, match="use AsyncAI for an httpx.AsyncClient"):
        AI(ACCOUNT, TOKEN, http_client=async_http)  # type: ignore[arg-type]
    asyncio.run(async_http.aclose())


def test_a_client_passed_in_is_not_closed_and_one_made_here_is() -> None:
    http = httpx.Client(transport=httpx.MockTransport(Recorder().handle))
    with AI(ACCOUNT, TOKEN, http_client=http) as client:
        client.run("openai/gpt-4o-mini", {"prompt": "hi"})
    assert not http.is_closed
    http.close()
    own = AI(ACCOUNT, TOKEN)
    own.close()
    assert own._http.is_closed


def test_models_reads_every_page() -> None:
    pages: list[str] = []

    def catalog(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        pages.append(request.url.params["per_page"])
        models = [{"id": f"openai/model-{page}-{i}", "provider": "openai"} for i in range(2)]
        info = {"page": page, "per_page": 2, "count": 2, "total_count": 6, "total_pages": 3}
        return httpx.Response(200, json={"success": True, "result": models, "result_info": info})

    http = httpx.Client(transport=httpx.MockTransport(catalog))
    with AI(ACCOUNT, TOKEN, http_client=http) as client:
        models = client.models(provider="openai")
    assert [m["id"] for m in models][::2] == [
        "openai/model-1-0",
        "openai/model-2-0",
        "openai/model-3-0",
    ]
    assert len(pages) == 3
    http.close()
