"""`AI` (sync) against a live gateway whose providers are the simulator: `run` for chat and
embedding models of each provider family, streamed and not, every gateway option observed at
the gateway, timeouts, an `httpx.Client` of one's own, and the model catalog."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.sdk.conftest import HELLO, eventually, upstream_count
from tollgate.sdk import AI, NotFound, Stream, UpstreamError

# One chat model per provider family: native OpenAI, Anthropic and Google, and an
# OpenAI-compatible vendor (each translated to and from its own wire format by the gateway).
CHAT_MODELS = [
    "openai/gpt-4o-mini",
    "anthropic/claude-sonnet-4-6",
    "google-ai-studio/gemini-2.5-flash",
    "groq/llama-3.3-70b-versatile",
]


def text_of(answer: dict[str, object]) -> str:
    return answer["choices"][0]["message"]["content"]  # type: ignore[index,no-any-return]


def test_run_answers_chat_models_of_every_family_in_openai_format(ai: AI, sim: Sim) -> None:
    assert ai.last_log_id is None
    log_ids = set()
    for model in CHAT_MODELS:
        answer = ai.run(model, {"messages": HELLO, "max_tokens": 400})
        assert answer["object"] == "chat.completion", model
        assert "simulated reply" in text_of(answer)
        assert answer["usage"]["prompt_tokens"] > 0
        assert ai.last_log_id is not None
        log_ids.add(ai.last_log_id)
    assert len(log_ids) == len(CHAT_MODELS)  # one log id per call
    prompt = ai.run("openai/gpt-4o-mini", {"prompt": "Say hello"})
    assert text_of(prompt).endswith("Say hello")
    assert upstream_count(sim) == len(CHAT_MODELS) + 1


def test_run_answers_embedding_models_with_input_or_workers_ai_text(ai: AI) -> None:
    openai = ai.run("openai/text-embedding-3-small", {"input": ["first", "second"]})
    assert openai["object"] == "list" and len(openai["data"]) == 2
    assert openai["data"][0]["embedding"]
    assert ai.last_log_id is not None
    first_log = ai.last_log_id
    google = ai.run("google-ai-studio/gemini-embedding-001", {"text": "one text"})
    assert len(google["data"]) == 1 and google["usage"]["prompt_tokens"] > 0
    assert ai.last_log_id not in (None, first_log)
    log = eventually(lambda: ai.gateway("default").get_log(first_log))
    assert log["path"] == "run" and log["provider"] == "openai"  # the REST surface's /ai/run


def test_run_streams_parsed_openai_chunks(ai: AI) -> None:
    for model in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-6"):  # relayed, translated
        with ai.run(model, {"prompt": "Say hello", "max_tokens": 40}, stream=True) as chunks:
            assert isinstance(chunks, Stream)
            assert chunks.response.headers["cf-aig-log-id"] == ai.last_log_id
            received = list(chunks)
        assert received and all(c["object"] == "chat.completion.chunk" for c in received)
        deltas = [c["choices"][0]["delta"] for c in received if c["choices"]]
        assert "simulated reply" in "".join(d.get("content") or "" for d in deltas), model
        assert chunks.response.is_closed  # read to the end: released


def test_a_stream_closed_early_releases_its_connection(ai: AI) -> None:
    stream = ai.run("openai/gpt-4o-mini", {"prompt": "a long story please"}, stream=True)
    first = next(stream)
    assert first["object"] == "chat.completion.chunk"
    stream.close()
    assert stream.response.is_closed
    assert list(stream) == []
    # The pool is intact: the next call works.
    assert ai.run("openai/gpt-4o-mini", {"prompt": "hi"})["object"] == "chat.completion"


def test_metadata_event_id_and_collect_log_reach_the_log(ai: AI) -> None:
    gateway = ai.gateway("default")
    ai.run("openai/gpt-4o-mini", {"prompt": "unlogged"}, gateway={"collect_log": False})
    unlogged = ai.last_log_id
    ai.run(
        "openai/gpt-4o-mini",
        {"prompt": "tagged"},
        gateway={"id": "default", "metadata": {"user": "u-1", "tier": 2}, "event_id": "ev-42"},
    )
    log = eventually(lambda: gateway.get_log(ai.last_log_id or ""))
    assert log["metadata"] == {"user": "u-1", "tier": 2}
    assert log["event_id"] == "ev-42"
    assert log["model"] == "gpt-4o-mini" and log["success"] is True
    # Logs are written in order: the later one is there, so the unlogged one never will be.
    with pytest.raises(NotFound):
        gateway.get_log(unlogged or "")


def test_cache_ttl_skip_cache_and_cache_key_drive_the_gateway_cache(ai: AI, sim: Sim) -> None:
    model, cached = "openai/gpt-4o-mini", {"cache_ttl": 60}
    first = ai.run(model, {"prompt": "cache me"}, gateway=cached)
    again = ai.run(model, {"prompt": "cache me"}, gateway=cached)
    assert again == first and upstream_count(sim) == 1  # a HIT: the upstream saw one call
    ai.run(model, {"prompt": "cache me"}, gateway={**cached, "skip_cache": True})
    assert upstream_count(sim) == 2
    keyed = {"cache_ttl": 60, "cache_key": "greeting"}
    one = ai.run(model, {"prompt": "hello"}, gateway=keyed)
    other = ai.run(model, {"prompt": "a different prompt"}, gateway=keyed)
    assert other == one and upstream_count(sim) == 3  # same key, same answer


def test_retries_option_retries_a_failing_provider(ai: AI, sim: Sim) -> None:
    prompt = "hello [sim fail-first=1 fail-status=503 fail-key=sdk-retry]"
    answer = ai.run(
        "openai/gpt-4o-mini",
        {"prompt": prompt},
        gateway={"retries": {"max_attempts": 2, "retry_delay_ms": 10, "backoff": "constant"}},
    )
    assert answer["object"] == "chat.completion"
    assert upstream_count(sim) == 2  # failed once, then answered
    with pytest.raises(UpstreamError) as caught:  # the same failure, no retries asked for
        ai.run("openai/gpt-4o-mini", {"prompt": prompt.replace("sdk-retry", "sdk-once")})
    assert caught.value.status == 503


def test_request_timeout_ms_bounds_the_wait_for_the_provider(ai: AI) -> None:
    with pytest.raises(UpstreamError) as caught:
        ai.run(
            "openai/gpt-4o-mini",
            {"prompt": "slow [sim latency-ms=3000]"},
            gateway={"request_timeout_ms": 200},
        )
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert caught.value.log_id == ai.last_log_id is not None


def test_the_client_timeout_raises_httpx_timeout(gateway: Gateway) -> None:
    account = gateway.account
    with AI(account.account_id, account.token, gateway.url, timeout=0.2) as ai:
        ai.run("openai/gpt-4o-mini", {"prompt": "quick"})
        assert ai.last_log_id is not None
        with pytest.raises(httpx.TimeoutException):
            ai.run("openai/gpt-4o-mini", {"prompt": "slow [sim latency-ms=1000]"})
        assert ai.last_log_id is None  # no answer, so no log id (not the previous one)


def test_an_httpx_client_of_ones_own_is_used_and_left_open(gateway: Gateway) -> None:
    seen: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: seen.append(request.url.path)]})
    account = gateway.account
    with AI(account.account_id, account.token, gateway.url + "/", http_client=http) as ai:
        assert ai.run("openai/gpt-4o-mini", {"prompt": "hi"})["object"] == "chat.completion"
    assert seen == [f"/client/v4/accounts/{account.account_id}/ai/run"]
    assert not http.is_closed
    http.close()


def test_models_lists_the_catalog_with_prices(ai: AI) -> None:
    everything = ai.models()
    ids = [model["id"] for model in everything]
    assert "openai/gpt-4o-mini" in ids and "anthropic/claude-sonnet-4-6" in ids
    assert len(ids) == len(set(ids))
    mini = next(model for model in everything if model["id"] == "openai/gpt-4o-mini")
    assert mini["provider"] == "openai" and mini["context_window"] > 0
    assert mini["pricing"]["currency"] == "USD"
    assert mini["pricing"]["input"] > 0 and mini["pricing"]["output"] > 0
    openai_only = ai.models(provider="openai")
    assert openai_only and {model["provider"] for model in openai_only} == {"openai"}
    assert len(openai_only) < len(everything)
    found = ai.models(search="gpt-4o-mini")
    assert found and all("gpt-4o-mini" in model["id"] for model in found)
    assert ai.models(search="no-such-model-anywhere") == []
