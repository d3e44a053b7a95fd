"""Fixtures for the simulator tests: one real ``SimServer`` for the session, served from a
background thread with its own event loop so the official SDKs' synchronous clients can call it
(an in-loop server would deadlock a blocking client), and one client per SDK pointed at it
(session-scoped: the clients hold no per-test state, and google-genai's is slow to build)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tollgate.sim import SimRecorder, SimServer, provider_base_urls


@dataclass
class RunningSim:
    base_url: str
    recorder: SimRecorder

    @property
    def urls(self) -> dict[str, str]:
        return provider_base_urls(self.base_url)


@pytest.fixture(scope="session")
def sim() -> Iterator[RunningSim]:
    started = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        async with SimServer(host="127.0.0.1", port=0) as server:
            state.update(loop=asyncio.get_running_loop(), stop=stop, server=server)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="sim-server", daemon=True)
    thread.start()
    assert started.wait(10), "simulator did not start"
    assert "error" not in state, state.get("error")
    server = state["server"]
    assert isinstance(server, SimServer)
    yield RunningSim(server.base_url, server.recorder)
    loop, stop = state["loop"], state["stop"]
    assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


@pytest.fixture
def http(sim: RunningSim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def oai(sim: RunningSim) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=sim.urls["openai"], api_key="sk-sim-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def claude(sim: RunningSim) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=sim.urls["anthropic"], api_key="sk-ant-sim-test", max_retries=0
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def gemini(sim: RunningSim) -> Iterator[genai.Client]:
    client = genai.Client(
        api_key="gemini-sim-test",
        http_options=types.HttpOptions(base_url=sim.urls["google-ai-studio"]),
    )
    yield client
    client.close()
