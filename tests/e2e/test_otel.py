"""OpenTelemetry export end to end: a gateway's `otel` exporters receive one span per request.

The collector is a real HTTP server in the test that keeps every OTLP POST; the client is the
official `openai` SDK. A gateway with `otel` sends spans with the GenAI attributes (model,
provider, tokens, cost, status) in batches, as JSON or protobuf; one without sends nothing; a
collector that never answers neither fails nor slows a request; a collector on a loopback
address is refused unless the operator allows that network.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway, Sim, provider_env
from tests.e2e.test_custom_cost import create_gateway
from tests.features.test_otel_wire import decode_protobuf_spans
from tests.support.accounts import seed_account
from tests.support.server import serve_in_thread
from tollgate.app import TollgateApp, create_app
from tollgate.features.otel import SpanExporter
from tollgate.settings import load_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Collector:
    """An OTLP/HTTP traces endpoint that keeps what it is sent."""

    url: str = ""
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, from JSON bodies and protobuf ones alike."""
        found: list[dict[str, Any]] = []
        with self.lock:
            posts = list(self.posts)
        for headers, body in posts:
            if headers["content-type"] == "application/x-protobuf":
                found += decode_protobuf_spans(body)
                continue
            for resource in orjson.loads(body)["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    found += [json_span(span) for span in scope["spans"]]
        return found

    def wait_for_spans(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(spans := self.spans()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(spans) >= count, f"the collector got {len(spans)} spans, expected {count}"
        return spans


def json_span(span: dict[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON span with its attributes as a plain dict (the protobuf decoder's shape)."""
    attributes: dict[str, Any] = {}
    for item in span["attributes"]:
        ((kind, value),) = item["value"].items()
        attributes[item["key"]] = int(value) if kind == "intValue" else value
    return {**span, "attributes": attributes}


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector()

    async def traces(request: Request) -> Response:
        body = await request.body()
        with received.lock:
            received.posts.append((dict(request.headers), body))
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    with serve_in_thread(app) as url:
        received.url = f"{url}/v1/traces"
        yield received


@dataclass
class Traced:
    gateway: Gateway
    app: TollgateApp

    @property
    def exporter(self) -> SpanExporter:
        spans = self.app.services.logs.spans
        assert spans is not None
        return spans

    def client(self, gateway_id: str, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.base("openai", gateway=gateway_id),
            api_key=self.gateway.account.token,
            default_headers=headers,
            max_retries=0,
            timeout=30,
        )


StartTraced = Callable[..., contextlib.AbstractContextManager[Traced]]


@pytest.fixture
def start_traced(tmp_path: Path, sim: Sim) -> StartTraced:
    """A gateway (SQLite, providers on the simulator) whose app the test can look into."""

    @contextlib.contextmanager
    def start(**env: str) -> Iterator[Traced]:
        database_url = f"sqlite:///{tmp_path / 'otel.db'}"
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_OTEL__FLUSH_INTERVAL_MS": "50",
                **provider_env(sim.url),
                **env,
            }
        )
        account = seed_account(database_url)
        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield Traced(Gateway(url, database_url, account), app)

    return start


# The collectors here listen on loopback: the operator allows it, as for a collector beside the
# gateway (account-chosen URLs reach public addresses only, tollgate/netguard.py).
PRIVATE_OK = {"TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8"}


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=20,
        **extra,
    )


def test_a_request_through_a_gateway_with_otel_is_exported_as_a_genai_span(
    start_traced: StartTraced, collector: Collector
) -> None:
    exporter = {"url": collector.url, "headers": {"x-team": "ml"}, "authorization": "Bearer k"}
    with start_traced(**PRIVATE_OK) as traced:
        create_gateway(traced.gateway, "traced", otel=[exporter])
        raw = ask(
            traced.client(
                "traced",
                **{
                    "cf-aig-otel-trace-id": TRACE_ID,
                    "cf-aig-otel-parent-span-id": PARENT_SPAN_ID,
                    "cf-aig-metadata": '{"team": "ml", "gen_ai.system": "spoofed"}',
                    "x-sim-output-tokens": "7",
                },
            )
        )
        completion = raw.parse()
        (span,) = collector.wait_for_spans(1)

    attributes = span["attributes"]
    assert span["name"] == "chat gpt-4o-mini" and span["kind"] == 2
    assert span["traceId"] == TRACE_ID and span["parentSpanId"] == PARENT_SPAN_ID
    assert int(span["endTimeUnixNano"]) > int(span["startTimeUnixNano"]) > 0
    assert "status" not in span  # a success leaves the status unset (server span conventions)
    assert attributes["gen_ai.system"] == "openai"  # not the client's metadata entry
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens == 7
    assert attributes["gen_ai.usage.cost"] == pytest.approx(float(raw.headers["cf-aig-cost"]))
    assert attributes["http.response.status_code"] == 200
    assert attributes["tollgate.log_id"] == raw.headers["cf-aig-log-id"]
    assert attributes["tollgate.gateway_id"] == "traced"
    assert attributes["tollgate.credential_source"] == "unified"
    assert attributes["team"] == "ml"
    headers, _ = collector.posts[0]
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer k" and headers["x-team"] == "ml"
    assert traced.exporter.exported == 1 and traced.exporter.failed == 0


def test_protobuf_exporters_get_binary_otlp_and_failures_are_error_spans(
    start_traced: StartTraced, collector: Collector
) -> None:
    exporter = {"url": collector.url, "headers": {}, "content_type": "protobuf"}
    with start_traced(**PRIVATE_OK) as traced:
        create_gateway(traced.gateway, "traced", otel=[exporter])
        client = traced.client("traced", traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
        ask(client)
        with pytest.raises(openai.InternalServerError):
            ask(client, extra_headers={"x-sim-error": "500"})
        spans = collector.wait_for_spans(2)

    assert {headers["content-type"] for headers, _ in collector.posts} == {"application/x-protobuf"}
    by_status = {span["attributes"]["http.response.status_code"]: span for span in spans}
    ok, failed = by_status[200], by_status[500]
    assert ok["traceId"] == failed["traceId"] == TRACE_ID  # from the W3C traceparent
    assert ok["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert ok["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert failed["status"] == {"code": 2, "message": "HTTP 500"}
    assert failed["attributes"]["error.type"] == "500"


def test_without_otel_nothing_is_sent(start_traced: StartTraced, collector: Collector) -> None:
    with start_traced(**PRIVATE_OK) as traced:
        create_gateway(traced.gateway, "traced", otel=[{"url": collector.url, "headers": {}}])
        ask(traced.client("default"))
        ask(traced.client("traced"))
        collector.wait_for_spans(1)
        time.sleep(0.3)  # six flush intervals: anything queued would have gone by now
        spans = collector.spans()
    assert [s["attributes"]["tollgate.gateway_id"] for s in spans] == ["traced"]


def test_a_collector_that_never_answers_neither_fails_nor_slows_requests(
    start_traced: StartTraced,
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"
        with start_traced(**PRIVATE_OK, TOLLGATE_OTEL__TIMEOUT_SECONDS="3") as traced:
            create_gateway(traced.gateway, "traced", otel=[{"url": url, "headers": {}}])
            client = traced.client("traced")
            took = []
            for _ in range(10):
                started = time.monotonic()
                assert ask(client).parse().choices[0].message.content
                took.append(time.monotonic() - started)
            # Requests went on while the first export hung: none waited for its 3 s timeout.
            assert max(took) < 2.0, took
            deadline = time.monotonic() + 10
            while traced.exporter.failed < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert traced.exporter.failed == 10 and traced.exporter.exported == 0
            assert ask(client).parse().choices[0].message.content  # and it still serves


def test_a_loopback_collector_is_refused_unless_the_operator_allows_its_network(
    start_traced: StartTraced, collector: Collector
) -> None:
    with start_traced() as traced:
        create_gateway(traced.gateway, "traced", otel=[{"url": collector.url, "headers": {}}])
        assert ask(traced.client("traced")).parse().choices
        deadline = time.monotonic() + 10
        while traced.exporter.refused < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert traced.exporter.refused == 1
    assert collector.posts == []
