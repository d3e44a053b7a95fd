"""The process's own log: text for people, or one JSON object per line for log shippers.

    RequestContext (features/context.py) -> CURRENT_REQUEST.set(ctx), once per request
    RequestFields (a filter on every handler) -> record.request_id, account_id, gateway_id
    JsonFormatter -> {"ts", "level", "logger", "message", "request_id", ..., "exception"}

Why a context variable: log lines come from code that has no request in hand (billing, Redis,
the metadata reader, uvicorn's access log). uvicorn serves each request in a task of its own and
asyncio copies the context into every task, so the id set when the request's context is made
follows it through every await and into every task it starts (an auto top-up it triggers logs
with its id), and never reaches another request's lines. The request id is the data plane's log
id, the `cf-aig-log-id` response header, so a log line leads to the request's log and back.

`log_config(level, log_format)` is the `logging.config.dictConfig` that `tollgate serve` hands
uvicorn. Text keeps uvicorn's own formats (its access log on stdout) and adds the gateway's
loggers on stderr, tagged `[request <id>]`. JSON sends everything, access log included, to
stderr, so stdout keeps only what the CLI prints (the sandbox banner). Either way the access
log's `key=` query parameters (Google's API key) are masked.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from tollgate.features.context import RequestContext

LogFormat = Literal["text", "json"]

# The data-plane request being served, set by `RequestContext` itself as it is created.
CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("tollgate_request", default=None)

_REQUEST_FIELDS = ("request_id", "account_id", "gateway_id")
# Everything a LogRecord carries by itself; any other attribute came from `extra=` and is kept.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's colored copy of the message
    "request_tag",
    *_REQUEST_FIELDS,
}
_SECRET_QUERY = re.compile(r"([?&](?:key|api_key|api-key)=)[^&#\s]*", re.IGNORECASE)
_ACCESS_LOGGER = "uvicorn.access"
# Alembic says "Context impl SQLiteImpl." at every start and on every `/readyz` (which reads the
# schema's revision): warnings only. `tollgate migrate` shows the migrations it applies.
# At debug, aiosqlite logs every statement with its parameters (twice): logged bodies and the
# credentials an account stores (custom provider headers, OpenTelemetry exporters) would reach
# the log in clear; stripe logs every response body, PaymentIntents' client secrets included,
# which Stripe says never to log. `log_level = "debug"` is for tollgate's own lines.
_QUIET: dict[str, Any] = {
    "alembic": {"level": "WARNING"},
    "aiosqlite": {"level": "INFO"},
    "stripe": {"level": "INFO"},
}


class RequestFields(logging.Filter):
    """Adds the current request's ids to every record (None outside a request), and masks
    API keys in access-log paths. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = CURRENT_REQUEST.get()
        if ctx is None:
            record.request_id = record.account_id = record.gateway_id = None
            record.request_tag = ""
        else:
            record.request_id = ctx.log_id
            record.account_id = ctx.account_id
            record.gateway_id = ctx.gateway_id
            record.request_tag = f" [request {ctx.log_id}]"
        if record.name == _ACCESS_LOGGER:
            _mask_access_path(record)
        return True


def _mask_access_path(record: logging.LogRecord) -> None:
    # uvicorn's access record: (client, method, path with query, HTTP version, status).
    args = record.args
    if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
        record.args = (args[0], args[1], _SECRET_QUERY.sub(r"\1REDACTED", args[2]), *args[3:])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. Fields: `ts` (UTC, ISO 8601, milliseconds),
    `level`, `logger`, `message`; `request_id`, `account_id`, `gateway_id` inside a request;
    `method`, `path`, `status`, `client` for access-log lines; whatever the call passed as
    `extra=`; `exception` (the traceback) and `exception_type` when one is attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            entry.update(method=method, path=path, status=status, client=client)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception_type"] = getattr(record.exc_info[0], "__name__", None)
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The logging configuration for `tollgate serve` (a `dictConfig` dict for uvicorn)."""
    level_name = level.upper()
    if log_format == "json":
        json_handler = {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "json",
            "filters": ["request"],
        }
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request": {"()": RequestFields}},
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {"json": json_handler},
            "loggers": {
                # uvicorn's loggers write through the root's handler, as everything else does.
                "uvicorn": {"handlers": [], "level": "INFO", "propagate": True},
                "uvicorn.error": {"level": "INFO"},
                "uvicorn.access": {"handlers": [], "level": "INFO", "propagate": True},
                **_QUIET,
            },
            "root": {"handlers": ["json"], "level": level_name},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestFields}},
        "formatters": {
            "default": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(levelprefix)s %(message)s",
                "use_colors": None,
            },
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
            "tollgate": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(levelprefix)s %(name)s: %(message)s%(request_tag)s",
                "use_colors": None,
            },
        },
        "handlers": {
            "default": _stream("default", "ext://sys.stderr"),
            "access": _stream("access", "ext://sys.stdout"),
            "tollgate": _stream("tollgate", "ext://sys.stderr"),
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            **_QUIET,
        },
        "root": {"handlers": ["tollgate"], "level": level_name},
    }


@contextlib.contextmanager
def uvicorn_loggers_kept() -> Iterator[None]:
    """Put uvicorn's loggers back as they were after the block. Starting an embedded uvicorn
    server (the sandbox's simulator, sim/server.py) applies uvicorn's default logging to the
    whole process, at the simulator's quiet level: without this, sandbox mode would lose the
    access log and write uvicorn's lines as text in the middle of a JSON log."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", _ACCESS_LOGGER)]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def _stream(formatter: str, stream: str) -> dict[str, Any]:
    return {
        "class": "logging.StreamHandler",
        "stream": stream,
        "formatter": formatter,
        "filters": ["request"],
    }
