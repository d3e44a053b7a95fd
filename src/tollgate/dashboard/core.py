"""What every dashboard page shares: the signed-in viewer, the page shell, refusals, and the
guard every form post goes through (session, same origin, CSRF token, permission).

A page module (`limit.py`, `credits.py`, ...) exposes `routes(core) -> list[Route]`; `routes.py`
mounts them all under `/dashboard`. A page handler starts with

    viewer = await core.viewer(request)                  # GET: the signed-in viewer, or a refusal
    posted = await core.posted(request, rerender)        # POST: (viewer, form), or a refusal

and renders with `core.pages.render(name, core.shell(viewer, active, ...))`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.api.auth import Principal
from tollgate.dashboard.format import AmountError
from tollgate.dashboard.sessions import COOKIE_NAME, Session, SessionStore
from tollgate.dashboard.web import (
    BASE,
    FormTooLarge,
    Pages,
    clear_session_cookie,
    read_form,
    redirect,
    same_origin,
)
from tollgate.errors import AuthenticationFailed
from tollgate.services import Services
from tollgate.store import accounts as account_repo
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
# The side navigation: (path under the account's URL, title). "" is the overview.
SECTIONS = (
    ("", "Overview"),
    ("credits", "Credits"),
    ("gateways", "Gateways"),
    ("limit", "Spending limit"),
    ("logs", "Logs"),
    ("usage", "Usage"),
    ("tokens", "API tokens"),
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in request: its session, the verified token and the account."""

    session: Session
    principal: Principal
    account: Account

    @property
    def can_edit(self) -> bool:
        return "edit" in self.principal.permissions

    @property
    def url(self) -> str:
        """The account's dashboard URL (the overview); pages live under it."""
        return f"{BASE}/{self.account.id}"


# Re-renders a page with an error message at a status (the page's own renderer).
Rerender = Callable[[Viewer, str, int], Awaitable[Response]]


class DashboardCore:
    """Sessions, templates and the checks every page makes, over the gateway's services."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions = SessionStore()
        self.pages = Pages()

    def session(self, request: Request) -> tuple[Session | None, bool]:
        """The request's live session (or None) and whether a signed-in one just expired."""
        found = self.sessions.get(request.cookies.get(COOKIE_NAME))
        return found.session, found.expired

    async def viewer(self, request: Request, permission: str = "read") -> Viewer | Response:
        """The signed-in viewer of the URL's account, or the response that refuses the request."""
        session, expired = self.session(request)
        if session is None or not session.signed_in:
            return self.to_sign_in(request, "expired" if expired else None)
        assert session.api_token is not None and session.account_id is not None
        try:
            principal = await self.services.tokens.verify(session.api_token)
        except AuthenticationFailed:
            return self.end(request, "token")
        if not principal.account_active:
            return self.end(request, "disabled")
        wanted = request.path_params.get("account_id", session.account_id)
        if wanted != principal.account_id:
            return self.forbidden(
                "This page belongs to another account. Your API token can only open its own "
                "account's pages.",
                home=f"{BASE}/{principal.account_id}",
            )
        if permission not in principal.permissions:
            return self.forbidden(
                f"Your API token lacks the '{permission}' permission this needs. Sign in with a "
                f"token that has '{permission}'.",
                home=f"{BASE}/{principal.account_id}",
            )
        account = await account_repo.get_account(self.services.store, principal.account_id)
        if account is None:
            return self.end(request, "disabled")
        return Viewer(session, principal, account)

    async def posted(
        self, request: Request, rerender: Rerender, *, permission: str = "edit", what: str = ""
    ) -> tuple[Viewer, dict[str, str]] | Response:
        """A form post's viewer and fields, once the session, the origin, the CSRF token and
        `permission` all check out; else the refusal (nothing has changed).

        A bad CSRF token or a foreign origin re-renders the page (`rerender`) with
        `CSRF_MESSAGE` (403); a token without `permission` gets a 403 page naming what it
        lacks (`what`: "change the spending limit")."""
        form = await form_or_empty(request)
        viewer = await self.viewer(request, "read")
        if not isinstance(viewer, Viewer):
            return viewer
        if not same_origin(request) or not self.sessions.csrf_matches(
            viewer.session, form.get("csrf_token")
        ):
            return await rerender(viewer, CSRF_MESSAGE, 403)
        if permission not in viewer.principal.permissions:
            return self.forbidden(
                f"Your API token lacks the '{permission}' permission, so it cannot "
                f"{what or 'make this change'}. Nothing was changed.",
                home=str(request.url.path),
            )
        return viewer, form

    def to_sign_in(self, request: Request, notice: str | None) -> Response:
        response = redirect(f"{BASE}/sign-in" + (f"?notice={notice}" if notice else ""))
        if notice:
            clear_session_cookie(response, request)
        return response

    def end(self, request: Request, notice: str) -> Response:
        """End the browser's session and send it to sign-in with `notice`."""
        if cookie := request.cookies.get(COOKIE_NAME):
            self.sessions.end(cookie)
        return self.to_sign_in(request, notice)

    def forbidden(self, message: str, *, home: str) -> Response:
        context = {"title": "Not allowed", "message": message, "home": home, "status": 403}
        return self.pages.render("error.html", context, status=403)

    def not_found(self, request: Request, message: str | None = None) -> Response:
        context = {
            "title": "Page not found",
            "message": message or f"There is no dashboard page at {request.url.path}.",
            "home": BASE,
            "status": 404,
        }
        return self.pages.render("error.html", context, status=404)

    def shell(self, viewer: Viewer, active: str, **context: Any) -> dict[str, Any]:
        """What every signed-in page's layout needs, plus the page's own `context`."""
        provider = self.services.topups.provider
        return {
            "account": viewer.account,
            "account_url": viewer.url,
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


def pick(value: str | None, allowed: tuple[str, ...], what: str) -> str:
    """A form's choice among `allowed`, or an `AmountError`-style message naming the choices."""
    if value not in allowed:
        raise AmountError(f"Choose {what}: {', '.join(allowed)}.")
    return value


async def form_or_empty(request: Request) -> dict[str, str]:
    """The posted form, or no fields when it is too large (the CSRF check then refuses it)."""
    try:
        return await read_form(request)
    except FormTooLarge:
        return {}
