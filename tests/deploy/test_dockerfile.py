"""The Dockerfile keeps its promises: a slim Python 3.11 base, a build stage whose tools stay
behind, a non-root user, data on a /data volume, a health check on /healthz, `tollgate serve`
as what runs, and no secret in any layer.

Most of it is read from the file, because building needs a Docker daemon and the base image
from a registry. `test_image_builds_and_answers_healthz` builds and runs it for real where a
daemon answers, and says why it skipped where none does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import PurePosixPath

import pytest
import typer.main

from tests.deploy.files import (
    DOCKERIGNORE,
    K8S,
    ROOT,
    env_of,
    final_stage,
    load_yaml_documents,
    parse_dockerfile,
)
from tollgate.cli import app as cli_app
from tollgate.settings import load_settings

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|MASTER_KEY|PRIVATE", re.I)


def test_every_stage_starts_from_python_311_slim() -> None:
    _, stages = parse_dockerfile()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.image), stage.image


def test_the_runtime_stage_installs_wheels_only_with_no_build_tools() -> None:
    stage = final_stage()
    runs = " ".join(stage.all("RUN"))
    assert "pip install --no-index --find-links /wheels tollgate" in runs
    for tool in ("apt-get", "build-essential", "gcc", "git ", "pip wheel"):
        assert tool not in runs, f"the runtime stage must not run {tool!r}"
    # The wheels come from the build stage by a mount, so they are in no layer of the image.
    assert "--mount=type=bind,from=build,source=/wheels" in runs
    assert not any("--from=build" in args for args in stage.all("COPY"))


def test_the_image_runs_as_a_fixed_non_root_uid_that_kubernetes_can_verify() -> None:
    users = final_stage().all("USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot can only check a numeric, non-0 uid"
    assert gid.isdigit() and int(gid) != 0
    for doc in load_yaml_documents(K8S / "deployment.yaml") + load_yaml_documents(
        K8S / "migrate-job.yaml"
    ):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)


def test_data_lives_on_the_data_volume_and_the_env_is_valid_settings() -> None:
    stage = final_stage()
    assert "/data" in json.loads(stage.all("VOLUME")[-1])
    env = {k: v for k, v in env_of(stage).items() if k.startswith("TOLLGATE_")}
    settings = load_settings(env=env)  # refuses any TOLLGATE_ name that is not a setting
    assert str(settings.data_dir) == "/data"
    assert settings.database.url == "sqlite:////data/tollgate.db"
    assert settings.server.host == "0.0.0.0"
    assert stage.all("EXPOSE") == [str(settings.server.port)]


def test_healthcheck_asks_healthz_on_the_configured_port() -> None:
    (check,) = final_stage().all("HEALTHCHECK")
    assert "CMD" in check.split()
    assert "/healthz" in check
    assert "TOLLGATE_SERVER__PORT" in check, "a port changed at run time must be probed"
    assert "--timeout=" in check and "--interval=" in check


def test_what_runs_is_tollgate_serve() -> None:
    stage = final_stage()
    entrypoint = json.loads(stage.all("ENTRYPOINT")[-1])
    command = json.loads(stage.all("CMD")[-1])
    assert entrypoint + command == ["tollgate", "serve"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tollgate = "tollgate.cli:main"' in pyproject  # the console script the image calls
    commands = typer.main.get_command(cli_app).commands
    assert {"serve", "migrate"} <= set(commands)


def test_no_secret_can_enter_a_layer() -> None:
    _, stages = parse_dockerfile()
    for stage in stages:
        assert not stage.all("ADD"), "ADD fetches URLs and unpacks archives: use COPY"
        for name in list(env_of(stage)) + [a.partition("=")[0] for a in stage.all("ARG")]:
            assert not SECRET_NAME.search(name), f"{name} would bake a secret into the image"
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            sources = args.split()[:-1]
            assert set(sources) <= {"pyproject.toml", "constraints.txt", "README.md", "src"}, (
                sources
            )


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def excluded_from_build_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parents, decides."""
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _pattern_regex(rule.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        "deploy/k8s/secret.yaml",
        "tollgate.toml",
        "data/tollgate.db",
        "data/sandbox-credentials.json",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "bench/.litellm-venv/bin/python",
        "src/tollgate/__pycache__/app.cpython-311.pyc",
        "src/tollgate.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build(path: str) -> None:
    assert excluded_from_build_context(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "src/tollgate/app.py",
        "src/tollgate/billing/data/catalog.json",
    ],
)
def test_dockerignore_sends_what_the_image_is_built_from(path: str) -> None:
    assert not excluded_from_build_context(path)


# --- a real build, where a daemon answers -------------------------------------------------


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker daemon answers (`docker info`: {why})"
    return None


@pytest.mark.timeout(1800)
def test_image_builds_and_answers_healthz() -> None:
    reason = _docker_unavailable()
    if reason:
        pytest.skip(f"cannot build the image here: {reason}")
    tag = "tollgate:deploy-test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1500)
    user = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Config.User}}", tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user == "10001:10001"
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", tag], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        status = ""
        for _ in range(120):
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if status in ("healthy", "unhealthy"):
                break
            time.sleep(1)
        assert status == "healthy"
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
