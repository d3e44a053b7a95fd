"""The process log's JSON lines and request ids (tollgate/log_output.py), on a private logger."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tollgate.features.context import RequestContext
from tollgate.log_output import JsonFormatter, RequestFields

ACCOUNT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFields())
    logger = logging.getLogger("tollgate.test_log_output")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_outside_a_request_has_no_request_fields(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    contextvars.Context().run(logger.info, "started %s", "now")
    (entry,) = lines(stream)
    assert entry.keys() == {"ts", "level", "logger", "message"}
    assert entry["message"] == "started now" and entry["level"] == "info"
    assert entry["logger"] == "tollgate.test_log_output"


def test_lines_inside_a_request_carry_its_ids_and_tasks_inherit_them(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log

    async def serve(gateway: str) -> str:
        ctx = RequestContext(ACCOUNT, gateway)
        logger.warning("in the request")
        await asyncio.create_task(asyncio.sleep(0))  # other requests run meanwhile
        await asyncio.get_running_loop().create_task(_log_later(logger))
        return ctx.log_id

    async def two_requests() -> list[str]:
        return await asyncio.gather(serve("one"), serve("two"))

    ids = asyncio.run(two_requests())
    entries = lines(stream)
    assert len(entries) == 4
    for log_id, gateway in zip(ids, ("one", "two"), strict=True):
        mine = [e for e in entries if e.get("request_id") == log_id]
        assert [e["message"] for e in mine] == ["in the request", "from a task it started"]
        assert all(e["account_id"] == ACCOUNT and e["gateway_id"] == gateway for e in mine)


async def _log_later(logger: logging.Logger) -> None:
    logger.info("from a task it started")


def test_exceptions_and_extra_fields_are_kept(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("it failed", extra={"attempt": 3})
    (entry,) = lines(stream)
    assert entry["level"] == "error" and entry["attempt"] == 3
    assert entry["exception_type"] == "ValueError"
    assert entry["exception"].startswith("Traceback") and "bad value" in entry["exception"]


def test_access_log_paths_lose_api_keys_and_become_fields(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    _, stream = json_log
    access = logging.getLogger("uvicorn.access")
    record = access.makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1/a/g/google-ai-studio/x?alt=sse&key=AIza123", "1.1", 200),
        None,
    )
    for handler in logging.getLogger("tollgate.test_log_output").handlers:
        handler.handle(record)
    (entry,) = lines(stream)
    assert entry["path"] == "/v1/a/g/google-ai-studio/x?alt=sse&key=REDACTED"
    assert "AIza123" not in entry["message"]
    assert (entry["method"], entry["status"], entry["client"]) == ("POST", 200, "127.0.0.1:5000")
