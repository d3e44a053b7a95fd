"""The installed `tollgate` command, as real subprocesses: the entry point, exit codes, `serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import clean_env
from tests.cli.test_serve import python_snippet
from tests.support.server import free_port

TOLLGATE = Path(sys.executable).parent / "tollgate"


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOLLGATE), *args],
        env={**clean_env(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "sim", "accounts", "tokens", "credits"):
        assert command in result.stdout


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tollgate", "--help"],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "accounts" in result.stdout


def test_accounts_create_json_then_show(tmp_path: Path) -> None:
    created = run(tmp_path, "accounts", "create", "Subprocess Inc", "--json")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    shown = run(tmp_path, "accounts", "show", account["id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == account


def test_exit_codes(tmp_path: Path) -> None:
    assert run(tmp_path, "migrate").returncode == 0
    unknown = run(tmp_path, "accounts", "show", "0123456789abcdef0123456789abcdef")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: ") and unknown.stderr.count("\n") == 1
    assert run(tmp_path, "accounts", "create").returncode == 2  # missing NAME
    down = run(
        tmp_path,
        "accounts",
        "list",
        TOLLGATE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/tollgate",
    )
    assert down.returncode == 1
    assert "cannot use the database" in down.stderr and "Traceback" not in down.stderr


@contextmanager
def serving(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [str(TOLLGATE), "serve", "--port", str(port), *args],
        env={**clean_env(tmp_path), **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("tollgate serve did not answer /healthz within 30 s")
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_answers_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with serving(tmp_path, TOLLGATE_SANDBOX__ENABLED="false", TOLLGATE_ADMIN_TOKEN="op") as (
        process,
        url,
    ):
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        admin = httpx.get(f"{url}/admin/v1/accounts", headers={"Authorization": "Bearer op"})
        assert admin.status_code == 200
    # uvicorn shuts down gracefully and re-raises the signal; `serve` swallows it: status 0.
    assert process.returncode == 0
    output = process.stdout.read() if process.stdout else ""
    assert "Application shutdown complete" in output
    assert "SANDBOX MODE" not in output


def test_serve_in_sandbox_mode_prints_a_banner_whose_snippet_works(tmp_path: Path) -> None:
    with serving(tmp_path) as (process, url):
        saved = json.loads((tmp_path / "data" / "sandbox-credentials.json").read_text())
        # The banner is printed during start-up, before /healthz answers.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert "SANDBOX MODE" in output and "no real money" in output
    for value in (url, saved["account_id"], saved["token"], saved["admin_token"]):
        assert value in output
    # Paste the Python snippet into a fresh gateway on the same data (same credentials).
    with serving(tmp_path) as (_, url2):
        snippet = python_snippet(output).replace(url, url2)
        pasted = subprocess.run(
            [sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI")},
        )
        assert pasted.returncode == 0, pasted.stderr
        assert pasted.stdout.strip()


def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(tmp_path, "serve", "--port", str(port), TOLLGATE_SANDBOX__ENABLED="false")
    assert result.returncode == 1


def test_serve_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = 99999\n")
    result = run(tmp_path, "serve", "--config", str(config))
    assert result.returncode == 2
    assert "server.port" in result.stderr and "Traceback" not in result.stderr


def test_serve_with_an_unreachable_database_exits_1(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        TOLLGATE_SANDBOX__ENABLED="false",
        TOLLGATE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/tollgate",
    )
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: the gateway did not start")


def test_serve_on_port_0_prints_the_port_it_got(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(TOLLGATE), "serve", "--port", "0"],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ends if the server exits
            if line.strip().startswith("gateway "):
                url = line.split()[-1]
                break
        else:
            pytest.fail("no banner")
        assert not url.endswith(":0")
        deadline = time.monotonic() + 30  # the banner comes just before the server listens
        while True:
            try:
                assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_sim_serves_the_simulator_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(TOLLGATE), "sim", "--port", str(port)],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/_sim/requests", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert f"127.0.0.1:{port}" in output
