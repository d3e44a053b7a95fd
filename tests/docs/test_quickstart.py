"""docs/quickstart.md runs as written against a sandbox server.

The page's first block is `make run`, which is `tollgate serve` (the test checks the Makefile
says so) on `127.0.0.1:8787` with `./data`. The test starts exactly that command in a temporary
directory, on a free port so it never meets a developer's running gateway, and changes one
thing in the blocks: `127.0.0.1:8787` becomes that port. Every other block then runs unchanged,
in order, in that directory: `sh` blocks with bash (their exports carry into later blocks),
`python` blocks with this virtualenv's interpreter. A block that exits non-zero fails the test,
and each block's output is checked for what the page says it shows.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
TOLLGATE = Path(sys.executable).parent / "tollgate"


def blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in BLOCK.findall(QUICKSTART.read_text())]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`tollgate serve` (what `make run` runs) in sandbox mode, in `tmp_path`, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}  # sandbox: no keys
    env["TOLLGATE_SERVER__PORT"] = str(port)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(TOLLGATE), "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the sandbox server did not start in 60 s")
        yield tmp_path, port
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


def test_make_run_is_tollgate_serve() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: install\n\t\$\(BIN\)/tollgate serve\n", makefile, re.M)
    first_lang, first_code = blocks()[0]
    assert (first_lang, first_code.strip()) == ("sh", "make run")


def test_every_block_runs_as_written(sandbox: tuple[Path, int]) -> None:
    workdir, port = sandbox
    exports: list[str] = []
    outputs: list[str] = []
    for lang, code in blocks()[1:]:
        code = code.replace("127.0.0.1:8787", f"127.0.0.1:{port}")
        if lang == "sh":
            script = "set -euo pipefail\n" + "\n".join(exports) + "\n" + code
            argv = ["bash", "-c", script]
            if code.lstrip().startswith("export "):
                exports.append(code)
        else:
            assert lang == "python", f"a {lang} block: the test knows sh and python"
            script = "set -euo pipefail\n" + "\n".join(exports) + '\nexec "$0" -c "$1"'
            argv = ["bash", "-c", script, sys.executable, code]
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"this block failed:\n{code}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)

    saved = json.loads((workdir / "data" / "sandbox-credentials.json").read_text())
    exported, curl, openai_out, anthropic_out, gemini_out, compat, balance = outputs
    assert exported == ""
    headers = dict(line.split(": ", 1) for line in curl.lower().splitlines())
    assert float(headers["cf-aig-cost"]) > 0 and "cf-aig-log-id" in headers
    assert float(headers["cf-aig-credits-remaining"]) < 10
    assert "cost: " in openai_out and "left: " in openai_out
    assert anthropic_out.strip() and gemini_out.strip()
    assert [line.split(" -> ")[0] for line in compat.splitlines()] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-sonnet-4-6",
        "google-ai-studio/gemini-2.5-flash",
    ]
    result = json.loads(balance)["result"]
    assert json.loads(balance)["success"] is True and saved["account_id"]
    assert 0 < float(result["balance"]) < 10  # $10 of sandbox credits, less the calls above
