"""What reached the simulated upstream: ``SimRecorder`` and ``/_sim/requests``."""

from __future__ import annotations

import httpx
import openai

from tests.sim.conftest import RunningSim
from tollgate.sim import RecordedRequest, SimRecorder, create_sim_app


def test_recorder_sees_method_path_query_headers_and_body(
    sim: RunningSim, oai: openai.OpenAI
) -> None:
    sim.recorder.clear()
    oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "record me"}],
        extra_headers={"X-Custom-Thing": "Yes"},
        extra_query={"trace": "1"},
    )
    [request] = sim.recorder.requests
    assert isinstance(request, RecordedRequest)
    assert request.method == "POST"
    assert request.path == "/openai/v1/chat/completions"
    assert request.query == "trace=1"
    assert request.headers["authorization"] == "Bearer sk-sim-test"
    assert request.headers["x-custom-thing"] == "Yes"  # names lower-cased, values untouched
    assert request.json()["messages"] == [{"role": "user", "content": "record me"}]


def test_http_listing_and_clearing(sim: RunningSim, http: httpx.Client) -> None:
    http.delete("/_sim/requests")
    http.post(
        "/anthropic/v1/messages",
        headers={"x-api-key": "abc", "anthropic-version": "2023-06-01"},
        content=b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}',
    )
    http.post("/google/v1beta/models/gemini-2.0-flash:countTokens?key=zz", content=b"not json")
    listed = http.get("/_sim/requests").json()
    assert [r["path"] for r in listed] == [
        "/anthropic/v1/messages",
        "/google/v1beta/models/gemini-2.0-flash:countTokens",
    ]
    assert listed[0]["headers"]["x-api-key"] == "abc"
    assert listed[0]["body"].startswith('{"model": "m"')
    assert listed[1]["query"] == "key=zz"
    assert listed[1]["body"] == "not json"  # recorded even when the sim rejects it

    assert http.delete("/_sim/requests").json() == {"cleared": 2}
    assert http.get("/_sim/requests").json() == []
    assert sim.recorder.requests == []


def test_control_routes_are_not_recorded(http: httpx.Client) -> None:
    http.delete("/_sim/requests")
    assert http.get("/_sim/health").json() == {"ok": True}
    http.get("/_sim/requests")
    assert http.get("/_sim/requests").json() == []


async def test_ring_keeps_only_the_most_recent_requests() -> None:
    recorder = SimRecorder(maxlen=3)
    app = create_sim_app(recorder)
    assert app.state.recorder is recorder
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        for number in range(5):
            await client.get("/openai/v1/models", headers={"authorization": f"Bearer key-{number}"})
    assert [r.headers["authorization"] for r in recorder.requests] == [
        "Bearer key-2",
        "Bearer key-3",
        "Bearer key-4",
    ]
    assert recorder.clear() == 3
