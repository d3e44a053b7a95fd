"""`tollgate serve`'s own log, as a real subprocess: `log_format = "json"` writes one JSON object
per line on stderr, and every line logged while serving a request carries that request's id
(the `cf-aig-log-id` the client got back); `text` tags the same lines `[request <id>]`.

The gateway runs in sandbox mode (its simulator in-process), the client is the official
`openai` SDK. Requests that log: a `cf-aig-metadata` entry that is not flat (a warning), an
upstream failure (the simulator's 500), a Google key in the query string (masked in the log).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.cli.conftest import clean_env
from tests.support.server import free_port

TOLLGATE = Path(sys.executable).parent / "tollgate"
GOOGLE_KEY = "AIzaSy-not-a-real-key-0123456789"


@dataclass
class Served:
    url: str
    account_id: str
    token: str
    stdout: Path
    stderr: Path

    def client(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1/{self.account_id}/default/openai",
            api_key=self.token,
            default_headers=headers,
            max_retries=0,
        )


@contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[Served]:
    """`tollgate serve` in sandbox mode; stopped with SIGTERM after the block."""
    port = free_port()
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [str(TOLLGATE), "serve", "--port", str(port)],
            env={**clean_env(tmp_path), **env},
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, stderr.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tollgate serve did not become ready"
            time.sleep(0.1)
        saved = json.loads((tmp_path / "data" / "sandbox-credentials.json").read_text())
        yield Served(url, saved["account_id"], saved["token"], stdout, stderr)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_requests_that_log(served: Served) -> tuple[str, str]:
    """A request with a nested metadata value, one the upstream fails, one carrying a Google key
    in its query; returns the first two's request ids."""
    raw = served.client(**{"cf-aig-metadata": '{"team": "ml", "nested": {"a": 1}}'})
    answered = raw.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
    )
    with pytest.raises(openai.InternalServerError) as failed:
        served.client(**{"x-sim-error": "500"}).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
        )
    google = f"{served.url}/v1/{served.account_id}/default/google-ai-studio"
    httpx.post(
        f"{google}/v1beta/models/gemini-2.0-flash:generateContent?key={GOOGLE_KEY}",
        headers={"cf-aig-authorization": f"Bearer {served.token}"},
        json={"contents": [{"parts": [{"text": "Hello"}]}]},
    )
    return answered.headers["cf-aig-log-id"], failed.value.response.headers["cf-aig-log-id"]


def test_json_log_lines_carry_the_request_id(tmp_path: Path) -> None:
    with serve(tmp_path, TOLLGATE_LOG_FORMAT="json") as served:
        warned_id, failed_id = make_requests_that_log(served)
    lines = served.stderr.read_text().splitlines()
    entries: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line is JSON

    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(e["message"].startswith("Application startup complete") for e in entries)
    assert any(e["message"].startswith("Application shutdown complete") for e in entries)
    warned = [e for e in entries if e.get("request_id") == warned_id]
    (warning,) = [e for e in warned if e["level"] == "warning"]
    assert warning["logger"] == "tollgate.features.metadata"
    assert "'nested' ignored" in warning["message"]
    assert warning["account_id"] == served.account_id and warning["gateway_id"] == "default"
    assert warning["metadata_key"] == "nested" and warning["reason"] == "not_flat"  # extra=
    assert warning["ts"].endswith("+00:00")
    (access,) = [e for e in warned if e["logger"] == "uvicorn.access"]
    assert access["status"] == 200 and access["method"] == "POST"
    (failure,) = [e for e in entries if e.get("request_id") == failed_id]
    assert failure["logger"] == "uvicorn.access" and failure["status"] == 500
    # Lines outside any request carry no request id.
    assert all("request_id" not in e for e in entries if e["logger"] == "uvicorn.error")
    text = "\n".join(lines)
    assert GOOGLE_KEY not in text and "key=REDACTED" in text
    assert "SANDBOX MODE" in served.stdout.read_text()  # stdout keeps the banner, no log


def test_text_log_lines_are_tagged_with_the_request_id(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        warned_id, _ = make_requests_that_log(served)
    errors = served.stderr.read_text()
    (warning,) = [line for line in errors.splitlines() if "'nested' ignored" in line]
    assert warning.startswith("WARNING:") and "tollgate.features.metadata:" in warning
    assert warning.endswith(f"[request {warned_id}]")
    output = served.stdout.read_text()  # uvicorn's access log stays on stdout in text mode
    assert "POST /v1/" in output and GOOGLE_KEY not in output + errors
