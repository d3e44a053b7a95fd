"""nginx for tests: a rendered copy of the shipped deploy/nginx.conf, run as a child process.

nginx resolves upstream host names when it loads its configuration, and `gateway` (the Compose
service) resolves only inside Compose's network. So a test runs a copy in which only the
addresses change: `server gateway:8787` becomes one line per loopback gateway, and the listening
port and the pid file may move to the test's own. Everything else is the file as shipped.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.deploy.files import NGINX_CONF

UPSTREAM_SERVER = re.compile(r"^(\s*)server gateway:8787( [^;]*)?;$", re.M)
CONTAINER_OPEN_FILES = 1024


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.skip("nginx is not installed (bench/install.sh installs it from Debian's packages)")
    return found


def render(gateways: list[str], *, listen: str | None = None, pid: Path | None = None) -> str:
    """deploy/nginx.conf with `server gateway:8787` replaced by one line per address."""
    text = NGINX_CONF.read_text()
    assert len(UPSTREAM_SERVER.findall(text)) == 2, "both upstreams name the gateway service"
    text = UPSTREAM_SERVER.sub(
        lambda m: "\n".join(f"{m.group(1)}server {a}{m.group(2) or ''};" for a in gateways), text
    )
    if listen is not None:
        text, count = re.subn(r"^(\s*)listen 8080;$", rf"\1listen {listen};", text, flags=re.M)
        assert count == 1
    if pid is not None:
        text, count = re.subn(r"^pid /tmp/nginx\.pid;$", f"pid {pid};", text, flags=re.M)
        assert count == 1
    return text


def container_open_files_limit() -> None:
    """The soft limit on open files a container gets from Docker 25 and later (1,024; the hard
    limit stays high): what nginx starts with in deploy/compose.yaml unless it raises it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(CONTAINER_OPEN_FILES, hard), hard))


@contextmanager
def running_nginx(config: Path, prefix: Path, *, as_in_a_container: bool = False) -> Iterator[str]:
    """Run nginx in the foreground on `config` until the block exits; yields its base URL.
    Its output (access log included) goes to `prefix/nginx.out`. `as_in_a_container`: start it
    with a container's default soft limit on open files (`container_open_files_limit`)."""
    nginx = nginx_binary()
    log = (prefix / "nginx.out").open("w")
    process = subprocess.Popen(
        [nginx, "-c", str(config), "-p", str(prefix), "-e", "/dev/stderr", "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=container_open_files_limit if as_in_a_container else None,
    )
    try:
        listen = re.search(r"listen ([\d.]+:\d+);", config.read_text())
        assert listen is not None
        url = f"http://{listen.group(1)}"
        for _ in range(100):
            if process.poll() is not None:
                raise RuntimeError((prefix / "nginx.out").read_text())
            try:
                if httpx.get(f"{url}/nginx-healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
