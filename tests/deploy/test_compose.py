"""deploy/compose.yaml is a consistent deployment: gateways that start only after a one-shot
migration, on healthy PostgreSQL and Redis, behind nginx, with every secret from deploy/.env.

The Compose plugin is not installed here, so the file is read with PyYAML and interpolated the
way Compose does (tests/deploy/files.py); `test_docker_compose_config_accepts_the_file` asks
the real `docker compose config` wherever the plugin is installed.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.files import (
    COMPOSE,
    DEPLOY,
    ENV_EXAMPLE,
    NGINX_CONF,
    ROOT,
    MissingVariable,
    env_file_entries,
    env_of,
    final_stage,
    image_tag,
    interpolate,
    load_yaml,
    package_version,
    referenced_variables,
)
from tollgate.settings import load_settings

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|MASTER_KEY")


def filled_env() -> dict[str, str]:
    """deploy/.env as an operator would write it: the example's uncommented lines, with a
    value for each required secret."""
    env = {key: value for key, value, commented in env_file_entries(ENV_EXAMPLE) if not commented}
    env.update(
        POSTGRES_PASSWORD="0123456789abcdef",
        TOLLGATE_ADMIN_TOKEN="operator-token-for-tests",
        TOLLGATE_OPERATOR__MASTER_KEY=MASTER_KEY,
    )
    return env


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    config = interpolate(load_yaml(COMPOSE), filled_env() if env is None else env)
    assert isinstance(config, dict)
    return config


def services() -> dict[str, Any]:
    return dict(compose()["services"])


def test_the_stack_has_its_five_services() -> None:
    assert set(services()) == {"postgres", "redis", "migrate", "gateway", "nginx"}


def test_several_gateways_run_by_default() -> None:
    assert int(services()["gateway"]["deploy"]["replicas"]) >= 2


def test_gateways_wait_for_the_migration_and_healthy_databases() -> None:
    s = services()
    assert s["gateway"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert s["nginx"]["depends_on"] == {"gateway": {"condition": "service_healthy"}}


def test_migrate_is_a_one_shot_tollgate_migrate_of_the_same_image() -> None:
    s = services()
    assert s["migrate"]["command"] == ["migrate"]
    assert s["migrate"]["restart"] == "no"
    assert s["migrate"]["image"] == s["gateway"]["image"]
    assert s["migrate"]["environment"] == s["gateway"]["environment"]
    assert "command" not in s["gateway"], "the gateway runs the image's own `tollgate serve`"


def test_every_long_running_service_has_a_healthcheck() -> None:
    s = services()
    for name in ("postgres", "redis", "gateway", "nginx"):
        check = s[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert check["interval"] and check["retries"], name
    assert "/healthz" in " ".join(s["gateway"]["healthcheck"]["test"])


def test_only_nginx_is_published() -> None:
    published = {name for name, service in services().items() if service.get("ports")}
    assert published == {"nginx"}


def test_images_are_pinned_and_the_gateway_is_this_version() -> None:
    s = services()
    for name, service in s.items():
        tag = image_tag(service["image"])
        assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"
    assert image_tag(s["gateway"]["image"]) == package_version()
    assert s["gateway"]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (DEPLOY / s["gateway"]["build"]["context"] / "Dockerfile").resolve() == (
        ROOT / "Dockerfile"
    )


def test_the_gateway_environment_is_valid_settings_on_postgres_and_redis() -> None:
    """What one gateway sees: deploy/.env (env_file) under compose.yaml's `environment`.
    load_settings refuses a TOLLGATE_ name that is no setting, so a typo fails here."""
    s = services()
    assert s["gateway"]["env_file"] == ".env"
    env = {**filled_env(), **s["gateway"]["environment"]}
    settings = load_settings(env=env)
    db = s["postgres"]["environment"]
    assert settings.database.url == (
        f"postgresql://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{db['POSTGRES_DB']}"
    )
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.operator.admin_token is not None
    assert settings.operator.master_key is not None


def test_every_optional_line_of_the_env_example_is_a_valid_setting_too() -> None:
    env = filled_env()
    for key, value, commented in env_file_entries(ENV_EXAMPLE):
        if commented:
            env[key] = value or "set-by-the-operator"
    env.update(services()["gateway"]["environment"])
    load_settings(env=env)


def test_compose_refuses_to_start_while_a_required_secret_is_empty() -> None:
    example = {k: v for k, v, commented in env_file_entries(ENV_EXAMPLE) if not commented}
    with pytest.raises(MissingVariable):
        compose(example)
    for required in ("POSTGRES_PASSWORD", "TOLLGATE_ADMIN_TOKEN", "TOLLGATE_OPERATOR__MASTER_KEY"):
        with pytest.raises(MissingVariable, match=required):
            compose({k: v for k, v in filled_env().items() if k != required})


def test_every_variable_compose_reads_is_explained_in_the_env_example() -> None:
    documented = {key for key, _, _ in env_file_entries(ENV_EXAMPLE)}
    assert referenced_variables(COMPOSE.read_text()) <= documented


def test_the_env_example_commits_no_secret() -> None:
    for key, value, _ in env_file_entries(ENV_EXAMPLE):
        if SECRET_NAME.search(key):
            assert value == "", f"{key} has a value in deploy/.env.example"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/.env" in ignored


def test_nginx_balances_the_gateway_service_on_its_port() -> None:
    s = services()
    mounts = s["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in mounts
    # The port the image listens on (its ENV), unless the gateway environment changes it.
    image_env = {k: v for k, v in env_of(final_stage()).items() if k.startswith("TOLLGATE_")}
    env = {**image_env, **filled_env(), **s["gateway"]["environment"]}
    port = load_settings(env=env).server.port
    servers = re.findall(r"^\s*server\s+([^\s;{]+)[\s;]", NGINX_CONF.read_text(), re.M)
    assert servers and set(servers) == {f"gateway:{port}"}
    published = s["nginx"]["ports"][0]
    assert re.search(r"listen\s+" + published.rsplit(":", 1)[1] + ";", NGINX_CONF.read_text())


def _compose_plugin_missing() -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        return "the docker compose plugin is not installed (`docker compose version` failed)"
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    reason = _compose_plugin_missing()
    if reason:
        pytest.skip(reason)
    # A copy, so the deploy/.env written for it cannot be mistaken for a real one.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    env_text = "".join(f"{key}={value}\n" for key, value in filled_env().items())
    (tmp_path / "deploy" / ".env").write_text(env_text)
    result = subprocess.run(
        ["docker", "compose", "-f", str(tmp_path / "deploy" / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "tollgate" in result.stdout
