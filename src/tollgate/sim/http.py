"""HTTP plumbing shared by the provider modules: the request steps every endpoint runs
(controls, latency, auth, simulated errors, JSON parsing) and the response helpers (JSON, SSE,
abrupt disconnects).

An endpoint is a plain ``async def handler(call: Call) -> Response``; ``endpoint(provider,
handler)`` turns it into a Starlette endpoint. Errors are raised as ``SimError`` and rendered in the
provider's own error shape by the ``Provider`` the endpoint belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollgate.sim.controls import (
    Controls,
    FailureCounter,
    InvalidControl,
    parse_controls,
    split_model,
)

INVALID_KEY = "sim-invalid-key"
SIM_HEADER = "x-tollgate-sim"
# What ``x-sim-junk-lines`` puts before a frame: a line with no field name an SSE parser knows
# (the part before the first colon), which the SSE rules say to ignore. Braces and quotes, as
# in a stray line of JSON or an HTML error page that leaked into the stream.
JUNK_LINE = b'<garbage> {"not": "an event"}\n'

JsonObject = dict[str, Any]


class SimulatedDisconnect(Exception):
    """Raised inside a response body to make the server close the connection mid-response.

    uvicorn answers an exception after the response started by closing the socket without the
    final chunk, which is exactly an upstream dying mid-stream. ``install_drop_log_filter`` keeps
    these out of uvicorn's error log.
    """


class _DropFilter(logging.Filter):
    """Hide uvicorn's "Exception in ASGI application" records caused by ``x-sim-drop-after``:
    the dropped connection is the intended behaviour, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_drop(record.exc_info[1]))


def _is_drop(exc: BaseException | None) -> bool:
    if isinstance(exc, SimulatedDisconnect):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_drop(inner) for inner in exc.exceptions)
    return False


def install_drop_log_filter() -> None:
    """Filter simulated drops out of ``uvicorn.error``, once per process.

    It is a process-wide logger, so this is the one global the simulator touches; the filter only
    matches the simulator's own exception type, whichever server runs the app (``SimServer``, the
    CLI or a test's own uvicorn)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


@dataclass
class SimError(Exception):
    """An error response in a provider's format: status, JSON body and extra headers."""

    status: int
    body: JsonObject
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Provider:
    """How one provider authenticates, shapes its errors and names things.

    ``error(status, message, detail)`` builds the provider's error for a status code; ``detail``
    is a provider-specific code (``invalid_api_key``, ``API_KEY_INVALID``...) or ``None``.
    ``check_auth(request)`` raises a ``SimError`` when the credentials are missing or invalid.
    ``headers()`` returns the per-response headers the real API sends (request ids...).
    ``prompt_of(body)`` extracts the last user text (for ``[sim ...]`` directives).
    """

    name: str
    error: Callable[[int, str, str | None], SimError]
    check_auth: Callable[[Request], None]
    headers: Callable[[], dict[str, str]]
    prompt_of: Callable[[JsonObject], str]
    bad_json_message: str
    default_messages: Mapping[int, str]

    def simulated_error(self, status: int, controls: Controls) -> SimError:
        """The error ``x-sim-error: status`` asks for (429s carry ``retry-after``)."""
        message = (
            self.default_messages.get(status)
            or self.default_messages[500 if status >= 500 else 400]
        )
        error = self.error(status, message, None)
        if status == 429:
            error.headers.setdefault("retry-after", str(controls.retry_after))
        return error


@dataclass(frozen=True)
class Call:
    """One parsed request handed to an endpoint handler."""

    request: Request
    body: JsonObject
    controls: Controls
    model: str
    started: float

    @property
    def path_params(self) -> Mapping[str, Any]:
        return self.request.path_params


Handler = Callable[[Call], Awaitable[Response]]


def endpoint(
    provider: Provider,
    handler: Handler,
    *,
    model_param: str | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler`` in the steps every simulated endpoint runs, in the upstream's order:
    latency, authentication, forced error, JSON parsing, then the handler itself."""

    async def run(request: Request) -> Response:
        started = time.monotonic()
        raw = await request.body()
        body, bad_json = _parse_json(raw)
        model = str(request.path_params.get(model_param, "")) if model_param else ""
        if not model:
            model = str(body.get("model") or "")
        control_error: SimError | None = None
        try:
            controls = parse_controls(request.headers, model, provider.prompt_of(body))
        except InvalidControl as exc:
            controls, control_error = Controls(), provider.error(400, str(exc), None)
        # The latency applies to every answer, errors included, as a slow upstream would.
        await _sleep_ms(controls.latency_ms)
        failing = control_error is None and _failures_of(request).should_fail(controls)
        if failing:
            await _sleep_ms(controls.fail_latency_ms)
        try:
            if control_error is not None:
                raise control_error
            if failing:
                raise provider.simulated_error(controls.fail_status, controls)
            provider.check_auth(request)
            if controls.error is not None:
                raise provider.simulated_error(controls.error, controls)
            if bad_json:
                raise provider.error(400, provider.bad_json_message, None)
            call = Call(request, body, controls, split_model(model)[0], started)
            try:
                response = await handler(call)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                # A body of the wrong shape: the real APIs answer 400, never 500.
                raise provider.error(400, f"Invalid request body: {exc}", None) from None
        except SimError as exc:
            response = json_response(exc.body, status=exc.status, headers=exc.headers)
        for name, value in provider.headers().items():
            response.headers.setdefault(name, value)
        response.headers[SIM_HEADER] = "1"
        return response

    return run


def _failures_of(request: Request) -> FailureCounter:
    counter: FailureCounter = request.app.state.failures
    return counter


def _parse_json(raw: bytes) -> tuple[JsonObject, bool]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}, True
    if not isinstance(value, dict):
        return {}, True
    return value, False


async def _sleep_ms(milliseconds: int) -> None:
    if milliseconds > 0:
        await asyncio.sleep(milliseconds / 1000)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response (``application/json``) serialised with orjson."""
    return Response(
        orjson.dumps(data),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def reply_json(call: Call, data: Any, *, headers: Mapping[str, str] | None = None) -> Response:
    """A successful JSON answer; with ``x-sim-drop-after`` set, the connection dies halfway
    through the body instead."""
    if call.controls.drop_after is None:
        return json_response(data, headers=headers)
    payload = orjson.dumps(data)

    async def half_then_drop() -> AsyncIterator[bytes]:
        yield payload[: len(payload) // 2]
        raise SimulatedDisconnect

    return StreamingResponse(
        half_then_drop(), headers=dict(headers or {}), media_type="application/json"
    )


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: an optional ``event:`` line and a JSON ``data:`` line."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def stream_response(
    call: Call,
    frames: Iterable[bytes],
    *,
    media_type: str = "text/event-stream",
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """Stream ``frames`` (SSE events or JSON-array pieces), applying the stream controls:
    ``chunk-delay-ms`` between frames, ``drop-after`` (close the connection after N frames),
    ``garble-after`` (after N frames, send one frame of malformed JSON and end the stream
    cleanly, as a broken upstream would), ``omit-last`` (leave out the last N frames and end
    cleanly: the closing events never come) and ``junk-lines`` (N lines that are not SSE
    before every frame of an event stream)."""
    controls = call.controls
    frames = list(frames)
    if controls.omit_last:
        del frames[max(len(frames) - controls.omit_last, 0) :]
    junk = JUNK_LINE * controls.junk_lines if media_type == "text/event-stream" else b""

    async def body() -> AsyncIterator[bytes]:
        for index, frame in enumerate(frames):
            if controls.drop_after is not None and index >= controls.drop_after:
                raise SimulatedDisconnect
            if controls.garble_after is not None and index >= controls.garble_after:
                yield b'data: {"choices": [{"delta": {"content": "unterminated\n\n'
                return
            if index and controls.chunk_delay_ms:
                await _sleep_ms(controls.chunk_delay_ms)
            yield junk + frame

    all_headers = {"cache-control": "no-cache"}
    all_headers.update(headers or {})
    return StreamingResponse(body(), headers=all_headers, media_type=media_type)


def elapsed_ms(call: Call) -> str:
    """Milliseconds since the request arrived, for ``openai-processing-ms``-style headers."""
    return str(int((time.monotonic() - call.started) * 1000))


def header_key(request: Request, name: str) -> str | None:
    """A credential header's value, ``None`` when absent or blank."""
    value = request.headers.get(name)
    if value is None:
        return None
    return value.strip() or None
