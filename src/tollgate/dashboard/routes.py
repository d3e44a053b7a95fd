"""The dashboard: server-rendered pages at `/dashboard` over the same store and billing modules as
the management API (PRODUCT.md §2.4).

    GET  /dashboard                      -> the account's overview, or sign-in
    GET  /dashboard/sign-in              the sign-in form (an API token)
    POST /dashboard/sign-in              verify the token, start a session
    POST /dashboard/sign-out             end the session
    GET  /dashboard/{account_id}         overview: Credits Available, spend, forecast   (read)
    GET  /dashboard/{account_id}/limit   the account spending limit                     (read)
    POST /dashboard/{account_id}/limit   set or remove it                               (edit)
    GET  /dashboard/{account_id}/{section}  sections not built yet: an honest empty state
    GET  /dashboard/static/...           CSS and images, served by tollgate itself

A page checks, on every request, the session (`sessions.py`), that its API token still verifies,
that the URL's account is the token's (else a 403 page) and the permission the page needs; what
the token may not do is not shown (no edit controls without `edit`) and refused if posted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tollgate.api.auth import Principal
from tollgate.api.billing import MAX_LIMIT_CENTS, MIN_LIMIT_CENTS
from tollgate.dashboard.format import AmountError, parse_dollars_to_cents
from tollgate.dashboard.overview import load_overview
from tollgate.dashboard.sessions import COOKIE_NAME, Session, SessionStore
from tollgate.dashboard.web import (
    BASE,
    HERE,
    FormTooLarge,
    Pages,
    clear_session_cookie,
    read_form,
    redirect,
    same_origin,
    set_session_cookie,
)
from tollgate.errors import AuthenticationFailed
from tollgate.ids import ACCOUNT_ID
from tollgate.money import from_cents
from tollgate.services import Services
from tollgate.store import accounts as account_repo
from tollgate.store import limits as limit_repo
from tollgate.store.models import Account

# Messages the sign-in page shows, chosen by a code in its URL (never text from the URL itself).
NOTICES = {
    "expired": "Your session expired after a period of inactivity. Sign in again to continue.",
    "signed-out": "You are signed out.",
    "token": "Your API token is no longer valid (revoked or expired). Sign in with a current one.",
    "disabled": "This account is disabled. Ask the gateway operator to enable it.",
}
CSRF_MESSAGE = (
    "This form was not accepted: it came from another session or an old page. Nothing was "
    "changed. Reload the page and try again."
)
API = "/client/v4/accounts/{account}/ai-gateway"
_BILLING = "the billing API, with the same API token"
_MANAGEMENT = "the management API, with the same API token"
SECTIONS = (  # (path, title, what to use until the page exists, how)
    ("credits", "Credits", _BILLING, f"{API}/billing/topup, topup/config, invoice-history"),
    ("gateways", "Gateways", _MANAGEMENT, f"{API}/gateways"),
    ("logs", "Logs", _MANAGEMENT, f"{API}/gateways/{{gateway_id}}/logs"),
    ("usage", "Usage", _BILLING, f"{API}/billing/usage-history, invoice-preview"),
    ("tokens", "API tokens", "the operator's CLI", "tollgate tokens create | list | revoke"),
)
SECTION_TITLES = {path: title for path, title, _, _ in SECTIONS}
DURATIONS = ("daily", "weekly", "monthly")
STRATEGIES = ("fixed", "sliding")


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in request: its session, the verified token and the account."""

    session: Session
    principal: Principal
    account: Account

    @property
    def can_edit(self) -> bool:
        return "edit" in self.principal.permissions


class Dashboard:
    """The dashboard as an ASGI app; `create_app` mounts it at `/dashboard`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions = SessionStore()
        self.pages = Pages()
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
                        Route("/{account_id}/limit", self.limit_page, methods=["GET"]),
                        Route("/{account_id}/limit", self.save_limit, methods=["POST"]),
                        Route("/{account_id}/{section}", self.not_built, methods=["GET"]),
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

    # --- sessions ------------------------------------------------------------------------------

    def _session(self, request: Request) -> tuple[Session | None, bool]:
        found = self.sessions.get(request.cookies.get(COOKIE_NAME))
        return found.session, found.expired

    async def _viewer(self, request: Request, permission: str = "read") -> Viewer | Response:
        """The signed-in viewer of the URL's account, or the response that refuses the request."""
        session, expired = self._session(request)
        if session is None or not session.signed_in:
            return self._to_sign_in(request, "expired" if expired else None)
        assert session.api_token is not None and session.account_id is not None
        try:
            principal = await self.services.tokens.verify(session.api_token)
        except AuthenticationFailed:
            return self._end(request, "token")
        if not principal.account_active:
            return self._end(request, "disabled")
        wanted = request.path_params.get("account_id", session.account_id)
        if wanted != principal.account_id:
            return self._forbidden(
                session,
                "This page belongs to another account. Your API token can only open its own "
                "account's pages.",
                home=f"{BASE}/{principal.account_id}",
            )
        if permission not in principal.permissions:
            return self._forbidden(
                session,
                f"Your API token lacks the '{permission}' permission this needs. Sign in with a "
                f"token that has '{permission}'.",
                home=f"{BASE}/{principal.account_id}",
            )
        account = await account_repo.get_account(self.services.store, principal.account_id)
        if account is None:
            return self._end(request, "disabled")
        return Viewer(session, principal, account)

    def _to_sign_in(self, request: Request, notice: str | None) -> Response:
        response = redirect(f"{BASE}/sign-in" + (f"?notice={notice}" if notice else ""))
        if notice:
            clear_session_cookie(response, request)
        return response

    def _end(self, request: Request, notice: str) -> Response:
        if cookie := request.cookies.get(COOKIE_NAME):
            self.sessions.end(cookie)
        return self._to_sign_in(request, notice)

    def _forbidden(self, session: Session | None, message: str, *, home: str) -> Response:
        context = {"title": "Not allowed", "message": message, "home": home, "status": 403}
        return self.pages.render("error.html", context, status=403)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        context = {
            "title": "Page not found",
            "message": f"There is no dashboard page at {request.url.path}.",
            "home": BASE,
            "status": 404,
        }
        return self.pages.render("error.html", context, status=404)

    def _shell(self, viewer: Viewer, active: str, **context: Any) -> dict[str, Any]:
        """What every signed-in page's layout needs."""
        provider = self.services.topups.provider
        return {
            "account": viewer.account,
            "account_url": f"{BASE}/{viewer.account.id}",
            "csrf_token": viewer.session.csrf_token,
            "can_edit": viewer.can_edit,
            "permissions": sorted(viewer.principal.permissions),
            "active": active,
            "sections": SECTIONS,
            "sandbox_payments": provider.sandbox,
            "sandbox_mode": self.services.settings.sandbox_mode,
            "error": None,
            "notice": None,
            **context,
        }

    async def short_path(self, request: Request) -> Response:
        """PRODUCT.md names the dashboard `/dash`: it redirects to the same page here."""
        rest = request.path_params["rest"]
        if rest and not rest.startswith("/"):
            return await self._not_found(request, Exception())
        return redirect(BASE + rest, status=308)

    # --- sign-in and sign-out ------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session, expired = self._session(request)
        if session is not None and session.signed_in:
            return redirect(f"{BASE}/{session.account_id}")
        return self._to_sign_in(request, "expired" if expired else None)

    def _sign_in_page(
        self, request: Request, *, error: str | None = None, status: int = 200
    ) -> Response:
        session, _ = self._session(request)
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
        session, _ = self._session(request)
        if session is not None and session.signed_in:
            return redirect(f"{BASE}/{session.account_id}")
        return self._sign_in_page(request)

    async def sign_in(self, request: Request) -> Response:
        session, _ = self._session(request)
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
        session, expired = self._session(request)
        if session is None or not session.signed_in:
            return self._to_sign_in(request, "expired" if expired else "signed-out")
        form = await _form_or_empty(request)
        if not same_origin(request) or not self.sessions.csrf_matches(
            session, form.get("csrf_token")
        ):
            viewer = await self._viewer(request)
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
            return await self._not_found(request, Exception())
        viewer = await self._viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        return await self._render_overview(viewer)

    async def _render_overview(
        self, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        data = await load_overview(self.services.store, self.services.topups, viewer.account)
        context = self._shell(viewer, "overview", data=data, error=error)
        return self.pages.render("overview.html", context, status=status)

    async def limit_page(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        notice = "Spending limit saved." if request.query_params.get("saved") else None
        if request.query_params.get("removed"):
            notice = "Spending limit removed. Spend is no longer capped."
        return await self._render_limit(viewer, notice=notice)

    async def _render_limit(
        self,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        field_error: str | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        data = await load_overview(self.services.store, self.services.topups, viewer.account)
        context = self._shell(
            viewer,
            "limit",
            data=data,
            notice=notice,
            error=error,
            field_error=field_error,
            form=form or {},
            durations=DURATIONS,
            strategies=STRATEGIES,
            minimum=from_cents(MIN_LIMIT_CENTS),
        )
        return self.pages.render("limit.html", context, status=status)

    async def save_limit(self, request: Request) -> Response:
        session, _ = self._session(request)
        form = await _form_or_empty(request)
        viewer = await self._viewer(request, "read")
        if not isinstance(viewer, Viewer):
            return viewer
        if not same_origin(request) or not self.sessions.csrf_matches(
            viewer.session, form.get("csrf_token")
        ):
            return await self._render_limit(viewer, error=CSRF_MESSAGE, status=403)
        if not viewer.can_edit:
            return self._forbidden(
                session,
                "Your API token lacks the 'edit' permission, so it cannot change the spending "
                "limit. Nothing was changed.",
                home=f"{BASE}/{viewer.account.id}/limit",
            )
        store, meter = self.services.store, self.services.meter
        if form.get("action") == "remove":
            await limit_repo.delete_account_limit(store, viewer.account.id)
            meter.forget_account_limit(viewer.account.id)
            return redirect(f"{BASE}/{viewer.account.id}/limit?removed=1")
        try:
            cents = parse_dollars_to_cents(
                form.get("amount", ""),
                field="the limit",
                minimum_cents=MIN_LIMIT_CENTS,
                maximum_cents=MAX_LIMIT_CENTS,
            )
            duration = _pick(form.get("duration"), DURATIONS, "a period")
            strategy = _pick(form.get("strategy"), STRATEGIES, "a window type")
        except AmountError as exc:
            return await self._render_limit(viewer, field_error=str(exc), form=form, status=400)
        await limit_repo.set_account_limit(
            store, viewer.account.id, from_cents(cents), duration, strategy
        )
        meter.forget_account_limit(viewer.account.id)  # the data plane enforces it at once
        return redirect(f"{BASE}/{viewer.account.id}/limit?saved=1")

    async def not_built(self, request: Request) -> Response:
        section = request.path_params["section"]
        if section not in SECTION_TITLES:
            return await self._not_found(request, Exception())
        viewer = await self._viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        means, how = next((m, h) for path, _, m, h in SECTIONS if path == section)
        how = how.replace("{account}", viewer.account.id)
        context = self._shell(viewer, section, title=SECTION_TITLES[section], means=means, how=how)
        return self.pages.render("coming_soon.html", context)


def _pick(value: str | None, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise AmountError(f"Choose {what}: {', '.join(allowed)}.")
    return value


async def _form_or_empty(request: Request) -> dict[str, str]:
    try:
        return await read_form(request)
    except FormTooLarge:
        return {}
