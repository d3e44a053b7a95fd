"""``SimServer`` embedded in the caller's event loop, ``provider_base_urls`` and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest

from tollgate.sim import SimServer, provider_base_urls


def test_provider_base_urls() -> None:
    urls = provider_base_urls("http://127.0.0.1:9999/")
    assert urls["openai"] == "http://127.0.0.1:9999/openai/v1"
    assert urls["anthropic"] == "http://127.0.0.1:9999/anthropic"
    assert urls["google-ai-studio"] == "http://127.0.0.1:9999/google"
    for vendor in (
        "groq",
        "grok",
        "mistral",
        "deepseek",
        "cerebras",
        "perplexity-ai",
        "openrouter",
        "workers-ai",
    ):
        assert urls[vendor] == urls["openai"]


async def test_embedded_server_serves_async_clients_in_the_same_loop() -> None:
    async with SimServer(host="127.0.0.1", port=0) as sim:
        assert sim.base_url == f"http://127.0.0.1:{sim.port}" and sim.port > 0
        oai = openai.AsyncOpenAI(base_url=f"{sim.base_url}/openai/v1", api_key="k", max_retries=0)
        claude = anthropic.AsyncAnthropic(
            base_url=f"{sim.base_url}/anthropic", api_key="k", max_retries=0
        )
        async with oai, claude:
            completion, message = await asyncio.gather(
                oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "together"}]
                ),
                claude.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=50,
                    messages=[{"role": "user", "content": "together"}],
                ),
            )
        assert completion.choices[0].message.content.endswith("to: together")  # type: ignore[union-attr]
        assert message.content[0].text.endswith("to: together")  # type: ignore[union-attr]
        assert sorted(r.path for r in sim.recorder.requests) == [
            "/anthropic/v1/messages",
            "/openai/v1/chat/completions",
        ]
        port = sim.port
    # Stopped: the port is released and nothing answers any more.
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/_sim/health")


async def test_two_servers_get_different_ports_and_recorders() -> None:
    async with SimServer() as first, SimServer() as second:
        assert first.port != second.port
        async with httpx.AsyncClient() as client:
            await client.get(
                f"{first.base_url}/openai/v1/models", headers={"authorization": "Bearer k"}
            )
        assert len(first.recorder.requests) == 1
        assert second.recorder.requests == []


async def test_stop_does_not_hang_on_an_open_stream() -> None:
    async with SimServer() as sim:
        client = httpx.AsyncClient()
        request = client.build_request(
            "POST",
            f"{sim.base_url}/openai/v1/chat/completions",
            headers={"authorization": "Bearer k", "x-sim-chunk-delay-ms": "1000"},
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "a b c d e f"}],
                "stream": True,
            },
        )
        response = await client.send(request, stream=True)
        assert response.status_code == 200
    await response.aclose()
    await client.aclose()


def test_cli_prints_base_urls_and_serves() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.sim", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(13)]
        base_url = lines[0].strip().rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:")
        printed = dict(line.split(None, 1) for line in lines[1:12])
        assert {k: v.strip() for k, v in printed.items()} == provider_base_urls(base_url)
        response = httpx.get(f"{base_url}/_sim/health", timeout=5)
        assert response.json() == {"ok": True}
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        process.wait(10)
    assert process.returncode == 0
    assert process.stderr is not None and process.stdout is not None
    assert "Traceback" not in process.stderr.read()
    process.stderr.close()
    process.stdout.close()


def test_cli_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    from tollgate.sim import main
    from tollgate.sim.server import bind_socket

    busy = bind_socket("127.0.0.1", 0)
    busy.listen()
    try:
        assert main(["--port", str(busy.getsockname()[1])]) == 1
    finally:
        busy.close()
    assert "cannot bind" in capsys.readouterr().err
