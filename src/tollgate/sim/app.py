"""The simulator's ASGI app: every provider on one server, plus the ``/_sim`` control surface.

URL layout::

    /openai/v1/...       OpenAI (and every OpenAI-compatible vendor): chat/completions,
                         responses, embeddings, models
    /anthropic/v1/...    Anthropic: messages, messages/count_tokens
    /google/{v1,v1beta}/models/{model}:{method}
                         Gemini: generateContent, streamGenerateContent, countTokens,
                         embedContent, batchEmbedContents
    GET    /_sim/requests    recorded requests as JSON (bodies as text), oldest first
    DELETE /_sim/requests    forget them -> {"cleared": N}
    GET    /_sim/health      {"ok": true}

Unknown routes answer 404 (and wrong methods 405) in the error shape of the provider whose prefix
the path starts with.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate.sim import anthropic, gemini, openai
from tollgate.sim.controls import FailureCounter
from tollgate.sim.http import SIM_HEADER, install_drop_log_filter, json_response
from tollgate.sim.openai_common import openai_error
from tollgate.sim.recorder import RecordedRequest, SimRecorder

CONTROL_PREFIX = "/_sim/"


class RecordingMiddleware:
    """Pure ASGI middleware that records every provider request (not ``/_sim/``) before the app
    sees it. The body is read whole, then replayed to the app, so streaming responses and
    disconnect detection are untouched."""

    def __init__(self, app: ASGIApp, recorder: SimRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        self.recorder.record(
            RecordedRequest(
                method=scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=_headers_of(scope),
                body=body,
            )
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _headers_of(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _recorder_of(request: Request) -> SimRecorder:
    recorder: SimRecorder = request.app.state.recorder
    return recorder


async def list_requests(request: Request) -> Response:
    """``GET /_sim/requests``."""
    return json_response([r.to_dict() for r in _recorder_of(request).requests])


async def clear_requests(request: Request) -> Response:
    """``DELETE /_sim/requests``."""
    return json_response({"cleared": _recorder_of(request).clear()})


async def health(request: Request) -> Response:
    """``GET /_sim/health``."""
    return json_response({"ok": True})


async def not_found(request: Request, exc: Exception) -> Response:
    """404/405 in the error shape of the provider the path belongs to."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    path = request.url.path
    if path.startswith("/anthropic/"):
        error = anthropic.anthropic_error(
            status, "Not found" if status == 404 else "Method not allowed"
        )
    elif path.startswith("/google/"):
        error = gemini.gemini_error(status, f"Requested URL {path} was not found on this server.")
    else:
        upstream_path = path.removeprefix("/openai")
        error = openai_error(status, f"Invalid URL ({request.method} {upstream_path})", None)
    return json_response(error.body, status=status, headers={SIM_HEADER: "1"})


def create_sim_app(recorder: SimRecorder | None = None) -> Starlette:
    """The simulator as an ASGI app. ``recorder`` receives every provider request (a fresh
    ``SimRecorder`` when omitted); it is also reachable as ``app.state.recorder``."""
    recorder = recorder if recorder is not None else SimRecorder()
    install_drop_log_filter()
    routes = [
        *openai.routes(),
        *anthropic.routes(),
        *gemini.routes(),
        Route("/_sim/requests", list_requests, methods=["GET"]),
        Route("/_sim/requests", clear_requests, methods=["DELETE"]),
        Route("/_sim/health", health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RecordingMiddleware, recorder=recorder)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.recorder = recorder
    app.state.failures = FailureCounter()  # the ``x-sim-fail-first`` counts
    return app
