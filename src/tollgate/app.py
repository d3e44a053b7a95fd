"""The application factory: `create_app(settings)` builds the whole gateway as one ASGI app.

Requests under `/v1/` (the data plane) go straight to a raw ASGI handler; everything else (the
management and admin APIs, operations endpoints) goes to a FastAPI app, which costs more per
request but gives typed models and OpenAPI where speed does not matter. `/dashboard` is the
server-rendered dashboard (`tollgate.dashboard`), a Starlette app of its own.

The lifespan owns every resource: database migrations, the upstream connection pool, the ledger's
maintenance task, and in sandbox mode the in-process simulator. It closes them all on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from tollgate.api.admin import admin_router
from tollgate.api.billing import billing_router, stripe_webhook_router
from tollgate.api.custom_providers import custom_providers_router
from tollgate.api.dataplane import DataPlane
from tollgate.api.logs import logs_router
from tollgate.api.management import management_router
from tollgate.api.models import models_router
from tollgate.api.openapi import install as install_openapi
from tollgate.api.provider_configs import provider_configs_router
from tollgate.api.render import admin_error_body, cloudflare_error_body, dumps, error_headers
from tollgate.billing.maintenance import Maintenance
from tollgate.cache_events import CacheEventPoller
from tollgate.credentials import managed_targets
from tollgate.dashboard import Dashboard
from tollgate.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from tollgate.features.otel import SpanExporter
from tollgate.log_output import uvicorn_loggers_kept
from tollgate.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tollgate.metrics import authorize_scrape
from tollgate.providers.registry import PROVIDERS
from tollgate.sandbox import SandboxCredentials, bootstrap_sandbox
from tollgate.services import Services, UpstreamTarget
from tollgate.settings import SANDBOX_KEY, Settings
from tollgate.store import Store
from tollgate.store.engine import DATABASE_ERRORS, unreachable
from tollgate.store.migrate import current_revision, migrate
from tollgate.upstream import Upstream

log = logging.getLogger(__name__)

# How long the shutdown waits for requests still running (cut at the end of the grace period,
# or served without one) to settle and log before it closes what they write to.
FINISH_AT_SHUTDOWN_SECONDS = 10.0

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _render_control_error(request: Request, error: GatewayError) -> Response:
    body = (
        admin_error_body(error)
        if request.url.path.startswith("/admin/")
        else cloudflare_error_body(error)
    )
    headers = {k.decode(): v.decode() for k, v in error_headers(error)}
    return Response(dumps(body), status_code=error.status, headers=headers)


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return _render_control_error(
        request, InvalidRequest(message, code="invalid_field", param=field)
    )


def _allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405 (RFC 9110 requires one): every method served at the path.

    Starlette's own names only the methods of the first route whose path matched, and FastAPI
    adds one route per method, so it would say `GET` where `GET, POST` are served. Each method
    is tried against the router instead (routes nest inside included routers).
    """
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Unknown routes and methods, in the surface's own error format."""
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}.",
            headers={"Allow": _allowed_methods(request)},
        )
    else:
        error = NotFound(
            f"No such endpoint: {request.method} {request.url.path}. See /openapi.json.",
            code="route_not_found",
        )
    return _render_control_error(request, error)


def _database_error(request: Request, exc: Exception) -> Response:
    """A database that cannot take work now (down, restarting, out of connections) is a 503 in
    the API's format, which clients retry; any other database error is a bug, left a 500."""
    if not unreachable(exc):
        raise exc
    log.warning(
        "database unreachable, %s %s refused with 503: %r", request.method, request.url.path, exc
    )
    error = ServiceUnavailable(
        "tollgate cannot reach its database right now. Retry in a few seconds.",
        code="database_unavailable",
    )
    return _render_control_error(request, error)


def _control_app(services: Services) -> FastAPI:
    control = FastAPI(title="tollgate", version="0.1.0", docs_url=None, redoc_url=None)
    control.include_router(management_router(services), prefix="/client/v4")
    control.include_router(models_router(services), prefix="/client/v4")
    control.include_router(custom_providers_router(services), prefix="/client/v4")
    control.include_router(logs_router(services), prefix="/client/v4")
    control.include_router(provider_configs_router(services), prefix="/client/v4")
    control.include_router(billing_router(services, services.topups), prefix="/client/v4")
    control.include_router(stripe_webhook_router(services, services.topups))
    control.include_router(admin_router(services), prefix="/admin/v1")
    control.add_exception_handler(GatewayError, _render_control_error)  # type: ignore[arg-type]
    control.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    control.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for database_error in DATABASE_ERRORS:
        control.add_exception_handler(database_error, _database_error)  # type: ignore[arg-type]
    install_openapi(control)  # every status and error body, in /openapi.json (api/openapi.py)

    @control.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    readiness = DatabaseReadiness(services.store)

    @control.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        problem = await readiness.problem()
        sandbox = services.settings.sandbox_mode
        if problem is not None:
            body = {"status": "unavailable", "database": problem, "sandbox": sandbox}
            return Response(dumps(body), status_code=503, media_type="application/json")
        body = {"status": "ready", "database": "ok", "sandbox": sandbox}
        return Response(dumps(body), media_type="application/json")

    # Prometheus (metrics.py): loopback clients and the admin token, unless [metrics] public.
    @control.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await authorize_scrape(
            public=services.settings.metrics.public,
            operator=services.operator,
            client_host=request.client.host if request.client else None,
            headers=request.headers,
        )
        page = await services.metrics.exposition(services.logs, services.response_cache)
        return Response(page, media_type=METRICS_CONTENT_TYPE)

    return control


class DatabaseReadiness:
    """`/readyz`'s check: one small read through the store, within `READY_TIMEOUT_SECONDS`.

    A load balancer stops sending requests to a process whose database is gone, and sends them
    again once it answers: nothing is cached, each probe reads. Probes that arrive while one is
    running share its answer, so a slow database is never hit by a pile of them. The answer
    names the failure's kind, not its text (which can name hosts and users): the process log
    has the details, at most once every `_LOG_EVERY_SECONDS`.
    """

    READY_TIMEOUT_SECONDS = 2.0
    _LOG_EVERY_SECONDS = 10.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._running: asyncio.Future[str | None] | None = None
        self._logged_at = -math.inf

    async def problem(self) -> str | None:
        """None when the database answers; else what is wrong, in a sentence."""
        if self._running is None:
            self._running = asyncio.ensure_future(self._probe())
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, _done: asyncio.Future[str | None]) -> None:
        self._running = None

    async def _probe(self) -> str | None:
        path = self.store.sqlite_path
        if path and not os.path.isfile(path):
            # The open connections still write to the deleted file: lost at the next restart.
            return self._report(f"the SQLite database file {path} is missing", None)
        try:
            async with asyncio.timeout(self.READY_TIMEOUT_SECONDS):
                revision = await current_revision(self.store)
        except TimeoutError:
            return self._report(
                f"the database did not answer within {self.READY_TIMEOUT_SECONDS:g} s", None
            )
        except Exception as exc:  # the driver's: refused, reset, no such database, ...
            return self._report(f"the database is unreachable ({type(exc).__name__})", exc)
        if revision is None:
            return self._report("the database has no tollgate schema (run tollgate migrate)", None)
        return None

    def _report(self, problem: str, exc: Exception | None) -> str:
        if time.monotonic() - self._logged_at >= self._LOG_EVERY_SECONDS:
            self._logged_at = time.monotonic()
            detail = f": {exc}" if exc is not None else ""
            log.warning("not ready: %s%s", problem, detail)
        return problem


def _is_rest_inference(path: str) -> bool:
    """`/client/v4/accounts/{id}/ai/v1/...` is inference (the data plane), not management."""
    if not path.startswith("/client/v4/accounts/"):
        return False
    parts = path.split("/", 7)
    return len(parts) > 6 and parts[5] == "ai" and parts[6] in ("v1", "run")


def _is_dashboard(path: str) -> bool:
    """`/dashboard/...` (and PRODUCT.md's short `/dash`, which redirects there)."""
    return path.startswith(("/dashboard/", "/dash/")) or path in ("/dashboard", "/dash")


class TollgateApp:
    """The ASGI callable: routes by path prefix, owns the lifespan."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Failed upstream attempts are counted into the metrics registry (metrics.py).
        self.upstream = Upstream(services.settings.upstream, services.metrics.upstream_errors)
        self.dataplane = DataPlane(services, self.upstream)
        self.control = _control_app(services)
        self.dashboard = Dashboard(services)
        self._exit_stack: contextlib.AsyncExitStack | None = None
        # Called once start-up is complete (the CLI prints the sandbox banner with it).
        self.announce: Callable[[Services, SandboxCredentials | None], None] | None = None
        self.sandbox_credentials: SandboxCredentials | None = None
        # True for a worker of `tollgate serve --workers N`: sibling processes share the database
        # while it starts (serve_workers.py), so its start-up recovery is that of a shared one.
        self.shares_database = False
        self._requests: set[asyncio.Task[Any] | None] = set()  # the requests being served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        task = asyncio.current_task()
        self._requests.add(task)  # until it has settled and logged: see `_let_requests_finish`
        try:
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                await self.dataplane(scope, receive, send)
            elif scope["type"] == "http" and _is_rest_inference(scope["path"]):
                await self.dataplane.rest(scope, receive, send)
            elif scope["type"] == "http" and _is_dashboard(scope["path"]):
                await self.dashboard(scope, receive, send)
            else:
                await self.control(scope, receive, send)
        finally:
            self._requests.discard(task)

    async def startup(self) -> None:
        stack = contextlib.AsyncExitStack()
        self._exit_stack = stack
        services = self.services
        await migrate(services.store)
        stack.push_async_callback(services.store.close)
        # Other processes' changes to what this one caches (revoked tokens, gateways, ...),
        # applied by a background task; started before anything is cached (cache_events.py).
        poller = CacheEventPoller.from_settings(services)
        if poller is not None:
            stack.push_async_callback((await poller.start()).aclose)
        # The request log writer: stopped after everything else, so the logs of the last
        # requests are flushed before the store closes (features/logs.py).
        services.logs.start()
        stack.push_async_callback(services.logs.aclose)
        # Gateways' OpenTelemetry spans, sent in batches by a task of their own (features/otel.py).
        spans = SpanExporter(services.settings.otel, services.settings.upstream)
        await spans.start()
        services.logs.spans = spans
        stack.push_async_callback(spans.aclose)
        if services.settings.sandbox_mode:
            from tollgate.sim import SimServer

            with uvicorn_loggers_kept():  # the simulator's uvicorn must not redo our logging
                sim = await stack.enter_async_context(SimServer(host="127.0.0.1", port=0))
            services.sandbox_base_url = sim.base_url
            services.providers = {
                slug: UpstreamTarget(slug, sim.base_url + row.sim_path, SANDBOX_KEY)
                for slug, row in PROVIDERS.items()
            }
        else:
            services.providers = managed_targets(services.settings)
        await self.upstream.start()
        stack.push_async_callback(self.upstream.close)
        stack.push_async_callback(services.topups.aclose)
        if services.redis is not None:  # the response cache's and rate limits' shared client
            stack.push_async_callback(services.redis.aclose)
        await self._recover_holds()
        if services.ledger.leases is not None:  # write the last settlements, give leases back
            stack.push_async_callback(services.ledger.leases.close)
        services.meter.start_keep_alive()  # long streams keep their holds past the TTL
        stack.push_async_callback(services.meter.stop_keep_alive)
        maintenance = Maintenance.from_settings(services.ledger, services.settings.billing)
        if maintenance is not None:  # periodic recovery and pruning, stopped first on shutdown
            stack.push_async_callback(maintenance.start().aclose)
        if services.settings.sandbox_mode:
            self.sandbox_credentials = await bootstrap_sandbox(services)
        # Everything allocated so far lives as long as the process: move it out of the garbage
        # collector's way, so its pauses stay short under load (measured in bench/).
        gc.collect()
        gc.freeze()
        if self.announce is not None:
            self.announce(services, self.sandbox_credentials)

    async def _recover_holds(self) -> None:
        """Resolve holds a crashed process left open (the policy is in billing/ledger.py).

        One process on SQLite is the database's only user, so every open hold at start-up is
        abandoned; with PostgreSQL, or a worker whose siblings may be mid-request, only expired
        ones are (`tollgate serve --workers N` resolves the rest once, before its workers start).
        """
        sole_user = self.services.store.dialect == "sqlite" and not self.shares_database
        await self.services.ledger.recover(all_open=sole_user)

    async def shutdown(self) -> None:
        await self._let_requests_finish()
        if self._exit_stack is not None:
            # Those cut while waiting for their upstream never settled: before the leases close.
            await self.services.meter.settle_abandoned()
            # Those that ended while the database was unreachable: a last try.
            await self.services.meter.deferred.drain()
            await self._exit_stack.aclose()
            self._exit_stack = None

    async def _let_requests_finish(self) -> None:
        """Wait (up to `FINISH_AT_SHUTDOWN_SECONDS`) for the requests still running.

        uvicorn shuts the application down as soon as its grace period (`server.
        shutdown_grace_seconds`) is over, right after cancelling the requests still running
        then: long streams. Each is settling its hold and queueing its log as it unwinds (the
        relay's `finally`), which takes database writes; closing the leases, the log writer and
        the store under them would leave their holds open until crash recovery and lose their
        logs (seen with a database slow to answer at that moment).
        """
        running = [task for task in self._requests if task is not None and not task.done()]
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=FINISH_AT_SHUTDOWN_SECONDS)
        if late:
            log.warning(
                "%d requests still running %.0f s into the shutdown; closing anyway (their holds "
                "are settled at their hold-time estimates)",
                len(late),
                FINISH_AT_SHUTDOWN_SECONDS,
            )

    async def __aenter__(self) -> TollgateApp:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report why start-up failed, then let the server stop
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, *, store: Store | None = None) -> TollgateApp:
    """Build the gateway. Nothing is opened until the lifespan starts (or `async with app`)."""
    return TollgateApp(Services.build(settings, store))
