"""The dashboard: server-rendered pages at `/dashboard` over the same store and billing modules as
the management API (PRODUCT.md §2.4).

    GET  /dashboard                      -> the account's overview, or sign-in
    GET  /dashboard/sign-in              the sign-in form (an API token)
    POST /dashboard/sign-in              verify the token, start a session
    POST /dashboard/sign-out             end the session
    GET  /dashboard/{account_id}         overview: Credits Available, spend, forecast   (read)
    ...  /dashboard/{account_id}/...     one module per page (`PAGE_MODULES`; each documents its
                                         routes): credits, gateways, limit, logs, usage, tokens
    GET  /dashboard/static/...           CSS and images, served by tollgate itself

A page checks, on every request, the session (`sessions.py`), that its API token still verifies,
that the URL's account is the token's (else a 403 page) and the permission the page needs
(`core.DashboardCore.viewer`); what the token may not do is not shown (no edit controls without
`edit`) and refused if posted (`core.DashboardCore.posted`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tollgate.dashboard import credits, gateways, limit, logs, tokens, usage
from tollgate.dashboard.core import (
    CSRF_MESSAGE,
    NOTICES,
    DashboardCore,
    Viewer,
    form_or_empty,
)
from tollgate.dashboard.overview import load_overview
from tollgate.dashboard.sessions import COOKIE_NAME
from tollgate.dashboard.web import (
    BASE,
    HERE,
    FormTooLarge,
    clear_session_cookie,
    read_form,
    redirect,
    same_origin,
    set_session_cookie,
)
from tollgate.errors import AuthenticationFailed
from tollgate.ids import ACCOUNT_ID
from tollgate.services import Services

__all__ = ["CSRF_MESSAGE", "Dashboard"]

# Each page module exposes `routes(core) -> list[Route]` (paths relative to /dashboard).
PAGE_MODULES: tuple[ModuleType, ...] = (limit, credits, logs, gateways, usage, tokens)


class Dashboard:
    """The dashboard as an ASGI app; `create_app` mounts it at `/dashboard`."""

    def __init__(self, services: Services) -> None:
        self.core = DashboardCore(services)
        self.services = services
        self.sessions = self.core.sessions
        self.pages = self.core.pages
        pages: list[BaseRoute] = []
        for module in PAGE_MODULES:
            pages.extend(module.routes(self.core))
        self.app = Starlette(
            routes=[
                Mount(
                    BASE,
                    routes=[
                        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
                        Route("/", self.home, methods=["GET"]),
                        Route("/sign-in", self.sign_in_form, methods=["GET"]),
                        Route("/sign-in", self.sign_in, methods=["POST"]),
                        Route("/sign-out", self.sign_out, methods=["POST"]),
                        Route("/{account_id}", self.overview, methods=["GET"]),
                        *pages,
                    ],
                ),
                Route(BASE, self.home, methods=["GET"]),
                Route("/dash{rest:path}", self.short_path, methods=["GET"]),
            ],
        )
        self.app.add_exception_handler(404, self._not_found)
        self.app.add_exception_handler(405, self._not_found)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.core.not_found(request)

    async def short_path(self, request: Request) -> Response:
        """PRODUCT.md names the dashboard `/dash`: it redirects to the same page here."""
        rest = request.path_params["rest"]
        if rest and not rest.startswith("/"):
            return self.core.not_found(request)
        return redirect(BASE + rest, status=308)

    # --- sign-in and sign-out ------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session, expired = self.core.session(request)
        if session is not None and session.signed_in:
            return redirect(f"{BASE}/{session.account_id}")
        return self.core.to_sign_in(request, "expired" if expired else None)

    def _sign_in_page(
        self, request: Request, *, error: str | None = None, status: int = 200
    ) -> Response:
        session, _ = self.core.session(request)
        new_id = None
        if session is None or session.signed_in:
            new_id, session = self.sessions.start()
        notice = NOTICES.get(request.query_params.get("notice", ""))
        context = {"csrf_token": session.csrf_token, "notice": notice, "error": error}
        response = self.pages.render("sign_in.html", context, status=status)
        if new_id is not None:
            set_session_cookie(response, request, new_id)
        return response

    async def sign_in_form(self, request: Request) -> Response:
        session, _ = self.core.session(request)
        if session is not None and session.signed_in:
            return redirect(f"{BASE}/{session.account_id}")
        return self._sign_in_page(request)

    async def sign_in(self, request: Request) -> Response:
        session, _ = self.core.session(request)
        try:
            form = await read_form(request)
        except FormTooLarge:
            return self._sign_in_page(request, error="The form was too large.", status=413)
        if (
            session is None
            or not same_origin(request)
            or not self.sessions.csrf_matches(session, form.get("csrf_token"))
        ):
            message = (
                "The sign-in form expired or came from another page. Nothing was changed. "
                "Paste your token and sign in again."
            )
            return self._sign_in_page(request, error=message, status=403)
        token = form.get("token", "").strip()
        if not token:
            return self._sign_in_page(request, error="Paste an API token (tg_...) to sign in.")
        try:
            principal = await self.services.tokens.verify(token)
        except AuthenticationFailed as exc:
            return self._sign_in_page(request, error=exc.message, status=401)
        if not principal.account_active:
            return self._sign_in_page(request, error=NOTICES["disabled"], status=403)
        if "read" not in principal.permissions:
            message = (
                "This API token lacks the 'read' permission, which the dashboard needs to show "
                "the account. Sign in with a token that has 'read' ('edit' too, to change "
                "settings)."
            )
            return self._sign_in_page(request, error=message, status=403)
        new_id, _ = self.sessions.sign_in(
            request.cookies.get(COOKIE_NAME), principal.account_id, token
        )
        response = redirect(f"{BASE}/{principal.account_id}")
        set_session_cookie(response, request, new_id)
        return response

    async def sign_out(self, request: Request) -> Response:
        session, expired = self.core.session(request)
        if session is None or not session.signed_in:
            return self.core.to_sign_in(request, "expired" if expired else "signed-out")
        form = await form_or_empty(request)
        if not same_origin(request) or not self.sessions.csrf_matches(
            session, form.get("csrf_token")
        ):
            viewer = await self.core.viewer(request)
            if not isinstance(viewer, Viewer):
                return viewer
            return await self._render_overview(viewer, error=CSRF_MESSAGE, status=403)
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            self.sessions.end(cookie)
        response = redirect(f"{BASE}/sign-in?notice=signed-out")
        clear_session_cookie(response, request)
        return response

    # --- pages ---------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        if not ACCOUNT_ID.fullmatch(request.path_params["account_id"]):
            return self.core.not_found(request)
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        return await self._render_overview(viewer)

    async def _render_overview(
        self, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        data = await load_overview(self.services.store, self.services.topups, viewer.account)
        context = self.core.shell(viewer, "", data=data, error=error)
        return self.pages.render("overview.html", context, status=status)
