"""`tollgate serve` and `tollgate sim`: the sandbox banner, the printed URL, the simulator hook."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tollgate.cli import public_url, sandbox_banner
from tollgate.sandbox import SandboxCredentials
from tollgate.settings import load_settings
from tollgate.sim import cli as sim_cli

CREDS = SandboxCredentials(
    admin_token="tgop_0123456789abcdefOPERATORsecretOPERATORsecretOPERATORsecre",
    account_id="0123456789abcdef0123456789abcdef",
    token="tg_fedcba9876543210DEMOsecretDEMOsecretDEMOsecretDEMOsecretDEMO",
)
URL = "http://127.0.0.1:8787"
BASE = f"{URL}/v1/{CREDS.account_id}/default/openai"


def python_snippet(banner: str) -> str:
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("from openai import"))
    end = next(i for i, line in enumerate(lines) if line.startswith("print("))
    return "\n".join(lines[start : end + 1])


def curl_command(banner: str) -> list[str]:
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    return shlex.split("\n".join(lines[start : end + 1]).replace("\\\n", " "))


def test_banner_says_sandbox_and_shows_every_credential() -> None:
    banner = sandbox_banner(URL, CREDS)
    assert "SANDBOX MODE" in banner
    assert "simulated" in banner and "no real money" in banner
    for value in (
        URL,
        CREDS.admin_token,
        CREDS.account_id,
        CREDS.token,
        "sandbox-credentials.json",
    ):
        assert value is not None and value in banner


def test_banner_curl_command_is_a_complete_request() -> None:
    argv = curl_command(sandbox_banner(URL, CREDS))
    assert argv[0] == "curl"
    assert f"{BASE}/chat/completions" in argv
    assert f"Authorization: Bearer {CREDS.token}" in argv
    assert "Content-Type: application/json" in argv
    body = argv[argv.index("-d") + 1]
    assert '"model": "gpt-4o-mini"' in body and '"messages"' in body


def test_banner_python_snippet_compiles_and_targets_the_demo_account() -> None:
    snippet = python_snippet(sandbox_banner(URL, CREDS))
    compile(snippet, "<banner>", "exec")  # pasteable: no stray indentation
    assert f'base_url="{BASE}"' in snippet
    assert f'api_key="{CREDS.token}"' in snippet
    assert 'model="gpt-4o-mini"' in snippet


def test_banner_without_a_generated_operator_token_points_at_the_configured_one() -> None:
    banner = sandbox_banner(URL, SandboxCredentials(None, CREDS.account_id, CREDS.token))
    assert "TOLLGATE_ADMIN_TOKEN" in banner and "None" not in banner


@pytest.mark.parametrize(
    ("env", "port", "expected"),
    [
        ({}, 8787, "http://127.0.0.1:8787"),
        ({"TOLLGATE_SERVER__HOST": "0.0.0.0"}, 9000, "http://127.0.0.1:9000"),
        ({"TOLLGATE_SERVER__HOST": "::"}, 9000, "http://[::1]:9000"),
        ({"TOLLGATE_SERVER__HOST": "::1"}, 9000, "http://[::1]:9000"),
        ({"TOLLGATE_SERVER__HOST": "gw.internal"}, 80, "http://gw.internal:80"),
        ({"TOLLGATE_SERVER__PUBLIC_URL": "https://ai.example.com/"}, 1, "https://ai.example.com"),
    ],
)
def test_public_url(env: dict[str, str], port: int, expected: str) -> None:
    assert public_url(load_settings(env=env), port) == expected


def test_sim_runs_the_simulator_main_with_host_and_port(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(sim_cli, "main", fake_main)
    assert cli("sim", "--host", "0.0.0.0", "--port", "9911").exit_code == 0
    assert cli("sim").exit_code == 0
    assert calls == [["--host", "0.0.0.0", "--port", "9911"], []]


def test_sim_passes_on_a_failing_exit_code(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_cli, "main", lambda argv: 1)
    assert cli("sim").exit_code == 1


def test_serve_refuses_an_invalid_config_before_starting(cli: Cli, tmp_path: Path) -> None:
    result = cli("serve", TOLLGATE_SERVER__PORT="not-a-port")
    assert result.exit_code == 2
    assert "server.port" in result.stderr
