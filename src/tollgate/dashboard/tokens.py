"""The API tokens page (issue: dashboard item 8): list, create and revoke the account's tokens.

GET  /dashboard/{account_id}/tokens                          the tokens              (read)
POST /dashboard/{account_id}/tokens                          create one              (edit)
GET  /dashboard/{account_id}/tokens/{token_id}/revoke        the confirm step        (edit)
POST /dashboard/{account_id}/tokens/{token_id}/revoke        revoke it               (edit)

The same functions as `tollgate tokens create | list | revoke` (`tollgate.operator`,
`store.tokens`), and revoking drops the token from the verifier's cache as the admin API does,
so the data plane refuses it (401) at once.

- **A new secret is shown once**, in the response to the POST that created it: never stored in
  the session, never put in a redirect. Each create form carries a single-use id, so a browser
  that resubmits the POST (reload, back) creates no second token and shows no secret.
- **No more than the signed-in token**: a new token gets only permissions the signed-in token
  has; asking for another is refused (403) and nothing is created.
- Revoking the token this session signed in with ends the session (the confirm step says so).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate import operator
from tollgate.api.admin import PERMISSION_ORDER, token_status
from tollgate.dashboard.core import DashboardCore, Viewer
from tollgate.dashboard.web import redirect
from tollgate.errors import NotFound
from tollgate.store import tokens as token_repo
from tollgate.store.models import ApiToken

NAME_MAX = 200  # the `api_tokens.name` column's width, as the admin API's `Name` allows
MAX_EXPIRY_DAYS = 3_650
PERMISSION_WORDS = {
    "run": "send requests through gateways (the data plane)",
    "read": "read settings, logs, usage and billing (and sign in here)",
    "edit": "change settings, top up, and manage tokens",
}
FORM_ID_SECONDS = 12 * 60 * 60  # as long as a session can last
MAX_FORM_IDS = 20_000


class OnceForms:
    """Single-use ids for create forms, bound to the session (by its CSRF token).

    In memory, like the sessions themselves; the oldest are dropped past `MAX_FORM_IDS`, and an
    id older than `FORM_ID_SECONDS` is refused (its session has ended by then anyway)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._issued: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def issue(self, csrf_token: str) -> str:
        form_id = secrets.token_urlsafe(16)
        self._issued[form_id] = (csrf_token, self.clock())
        while len(self._issued) > MAX_FORM_IDS:
            self._issued.popitem(last=False)
        return form_id

    def use(self, form_id: str | None, csrf_token: str) -> bool:
        """True once for an id issued to this session; False after that, or for any other."""
        issued = self._issued.get(form_id or "")
        if issued is None or not secrets.compare_digest(issued[0], csrf_token):
            return False
        del self._issued[form_id or ""]
        return self.clock() - issued[1] <= FORM_ID_SECONDS


class TokenFormError(ValueError):
    """A create form that cannot be used: `errors` maps a field to what to do instead."""

    def __init__(self, errors: dict[str, str], status: int = 400) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors
        self.status = status


def read_create_form(
    form: dict[str, str], allowed: frozenset[str], now: datetime
) -> tuple[str, frozenset[str], datetime | None]:
    """The new token's name, permissions and expiry from the posted form, or `TokenFormError`."""
    errors: dict[str, str] = {}
    name = form.get("name", "").strip()
    if not name:
        errors["name"] = "Enter a name for the token, such as ci-deploy, to tell it apart later."
    elif len(name) > NAME_MAX:
        errors["name"] = f"The name can be at most {NAME_MAX} characters; it has {len(name)}."
    wanted = frozenset(p for p in PERMISSION_ORDER if form.get(f"perm_{p}"))
    if not wanted:
        errors["permissions"] = "Choose at least one permission."
    expires_at = None
    days_text = form.get("expires_days", "").strip()
    if days_text:
        if not days_text.isascii() or not days_text.isdigit() or int(days_text) < 1:
            errors["expires_days"] = (
                f"Expiry must be a whole number of days from 1 to {MAX_EXPIRY_DAYS}, or empty "
                "for a token that does not expire."
            )
        elif int(days_text) > MAX_EXPIRY_DAYS:
            errors["expires_days"] = (
                f"Expiry can be at most {MAX_EXPIRY_DAYS} days (ten years); leave it empty for "
                "a token that does not expire."
            )
        else:
            expires_at = now + timedelta(days=int(days_text))
    if errors:
        raise TokenFormError(errors)
    beyond = [p for p in PERMISSION_ORDER if p in wanted - allowed]
    if beyond:
        raise TokenFormError(
            {
                "permissions": (
                    f"Your API token lacks '{', '.join(beyond)}', so it cannot create a token "
                    f"with {'it' if len(beyond) == 1 else 'them'}: a new token can have at most "
                    f"the permissions of the token you signed in with "
                    f"({', '.join(p for p in PERMISSION_ORDER if p in allowed)}). "
                    "Nothing was created."
                )
            },
            status=403,
        )
    return name, wanted, expires_at


def ordered_permissions(token: ApiToken) -> list[str]:
    return [p for p in PERMISSION_ORDER if p in token.permissions]


class TokensPage:
    """List, create (secret shown once) and revoke the account's API tokens."""

    def __init__(self, core: DashboardCore) -> None:
        self.core = core
        self.forms = OnceForms()

    async def show(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        notice = None
        revoked_id = request.query_params.get("revoked")
        tokens = await self._tokens(viewer)
        if revoked_id:
            gone = next((t for t in tokens if t.id == revoked_id and t.revoked_at), None)
            if gone is not None:
                notice = (
                    f"Token “{gone.name}” ({gone.id}) is revoked: requests that use it are "
                    "refused (401) from now on."
                )
        return await self.render(viewer, tokens=tokens, notice=notice)

    async def _tokens(self, viewer: Viewer) -> list[ApiToken]:
        """The account's tokens, newest first (the CLI's `tokens list` lists the same)."""
        return list(
            reversed(await token_repo.list_tokens(self.core.services.store, viewer.account.id))
        )

    async def render(
        self,
        viewer: Viewer,
        *,
        tokens: list[ApiToken] | None = None,
        notice: str | None = None,
        error: str | None = None,
        field_errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        created: tuple[ApiToken, str] | None = None,
        status: int = 200,
    ) -> Response:
        if tokens is None:
            tokens = await self._tokens(viewer)
        now = datetime.now(UTC)
        context = self.core.shell(
            viewer,
            "tokens",
            tokens=tokens,
            status_of={t.id: token_status(t, now) for t in tokens},
            permissions_of={t.id: ordered_permissions(t) for t in tokens},
            own_token_id=viewer.principal.token_id,
            grantable=[p for p in PERMISSION_ORDER if p in viewer.principal.permissions],
            permission_words=PERMISSION_WORDS,
            name_max=NAME_MAX,
            max_expiry_days=MAX_EXPIRY_DAYS,
            form_id=self.forms.issue(viewer.session.csrf_token) if viewer.can_edit else "",
            form=form or {},
            field_errors=field_errors or {},
            created=created,
            notice=notice,
            error=error,
        )
        return self.core.pages.render("tokens.html", context, status=status)

    async def _rerender(self, viewer: Viewer, error: str, status: int) -> Response:
        return await self.render(viewer, error=error, status=status)

    async def create(self, request: Request) -> Response:
        posted = await self.core.posted(request, self._rerender, what="create API tokens")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        if not self.forms.use(form.get("form_id"), viewer.session.csrf_token):
            message = (
                "This form was already submitted, so no new token was created. A token's secret "
                "is shown only once, right after it is created: if you did not copy it, revoke "
                "that token below and create a new one."
            )
            return await self.render(viewer, error=message, status=409)
        try:
            name, permissions, expires_at = read_create_form(
                form, viewer.principal.permissions, datetime.now(UTC)
            )
        except TokenFormError as exc:
            # Said at the top too: on a phone the form is far below the list.
            summary = "No token was created: correct the marked field under “Create a token”."
            return await self.render(
                viewer, error=summary, field_errors=exc.errors, form=form, status=exc.status
            )
        record, secret = await operator.issue_token(
            self.core.services.store,
            viewer.account.id,
            name=name,
            permissions=permissions,
            expires_at=expires_at,
        )
        # The secret goes into this response only: not the session, not a redirect's URL.
        return await self.render(viewer, created=(record, secret))

    async def _token_of(self, request: Request, viewer: Viewer) -> ApiToken | None:
        token_id = request.path_params["token_id"]
        token = await token_repo.get_token(self.core.services.store, token_id)
        return token if token is not None and token.account_id == viewer.account.id else None

    async def confirm(self, request: Request) -> Response:
        viewer = await self.core.viewer(request, "edit")
        if not isinstance(viewer, Viewer):
            return viewer
        return await self._confirm_page(request, viewer)

    async def _confirm_page(
        self, request: Request, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        token = await self._token_of(request, viewer)
        if token is None:
            return self._no_such_token(request)
        context = self.core.shell(
            viewer,
            "tokens",
            token=token,
            token_state=token_status(token),
            token_permissions=ordered_permissions(token),  # `permissions` is the viewer's
            is_own=token.id == viewer.principal.token_id,
            error=error,
        )
        return self.core.pages.render("tokens_revoke.html", context, status=status)

    def _no_such_token(self, request: Request) -> Response:
        return self.core.not_found(
            request,
            "There is no such API token in this account. It may have been deleted; see the "
            "list of tokens.",
        )

    async def revoke(self, request: Request) -> Response:
        async def rerender(viewer: Viewer, error: str, status: int) -> Response:
            return await self._confirm_page(request, viewer, error=error, status=status)

        posted = await self.core.posted(request, rerender, what="revoke API tokens")
        if isinstance(posted, Response):
            return posted
        viewer, _ = posted
        token_id = request.path_params["token_id"]
        services = self.core.services
        try:
            await operator.revoke_token(services.store, viewer.account.id, token_id)
        except NotFound:
            return self._no_such_token(request)
        services.tokens.forget_token(token_id)  # the data plane refuses it at once
        if token_id == viewer.principal.token_id:
            return self.core.end(request, "token")  # this session's own token: sign out
        return redirect(f"{viewer.url}/tokens?revoked={token_id}")


def routes(core: DashboardCore) -> list[Route]:
    page = TokensPage(core)
    return [
        Route("/{account_id}/tokens", page.show, methods=["GET"]),
        Route("/{account_id}/tokens", page.create, methods=["POST"]),
        Route("/{account_id}/tokens/{token_id}/revoke", page.confirm, methods=["GET"]),
        Route("/{account_id}/tokens/{token_id}/revoke", page.revoke, methods=["POST"]),
    ]
