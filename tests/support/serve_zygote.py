"""A process that imports tollgate once, then forks `tollgate serve` children on request.

A fresh `python -m tollgate serve` spends seconds importing (about 4 s of CPU on the CI machine)
before its own start-up (under a second). A test that kills and restarts a gateway many times
(tests/e2e/test_kill_cycles.py) starts each one here instead: the child is forked from this
already-imported interpreter and runs the same `tollgate serve` command (the CLI's own click
command, built once), in a process of its own that a SIGKILL kills like any other. The parent
keeps nothing the child needs: no event loop, thread, socket or database connection exists
before the fork.

Run as `python -m tests.support.serve_zygote` from the repository root. One JSON object a line
on stdin, one answer a line on stdout:

    {"op": "spawn", "args": [...], "env": {...}, "log": "path"}  ->  {"pid": 1234}
    {"op": "wait", "pid": 1234, "timeout": 5.0}  ->  {"returncode": -9}  (null: still running)

`returncode` reads as `subprocess.Popen.returncode` does (negative: killed by that signal).
When stdin closes (the test run is over) every child still running is killed.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

# What a serving child would otherwise import after the fork (measured: the modules a child
# added to `sys.modules` by the time it was ready, on SQLite and on PostgreSQL).
LAZY_IMPORTS = (
    "tollgate.app",
    "tollgate.http_protocol",
    "tollgate.sim",
    "uvicorn.lifespan.on",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "pydantic.v1",
)


def _preload() -> Any:
    """Import what `tollgate serve` imports, eagerly and lazily, and build its command."""
    import typer.main

    import tollgate.cli

    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    command = typer.main.get_command(tollgate.cli.app)
    # Everything loaded lives as long as the children: out of their collector's way, as the
    # server's own start-up does with what it allocates (app.py), so a child's first full
    # collection does not walk (and copy on write) the whole inherited heap.
    gc.collect()
    gc.freeze()
    return command


def _child(command: Any, request: dict[str, Any]) -> None:
    """In the forked child: become `tollgate serve`, writing to the log; never returns."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(request["env"])
        try:
            command.main(args=request["args"], prog_name="tollgate")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def main() -> None:
    command = _preload()
    children: set[int] = set()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(command, request)
            children.add(pid)
            answer: dict[str, Any] = {"pid": pid}
        else:
            returncode = _wait(request["pid"], request["timeout"])
            if returncode is not None:
                children.discard(request["pid"])
            answer = {"returncode": returncode}
        print(json.dumps(answer), flush=True)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


if __name__ == "__main__":
    main()
