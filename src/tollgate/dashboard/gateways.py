"""The Gateways pages (issue: dashboard item 4).

GET  /dashboard/{account_id}/gateways                          the list, and a create form   (read)
POST /dashboard/{account_id}/gateways                          create one                    (edit)
GET  /dashboard/{account_id}/gateways/{id}                     settings, spend rules, URLs   (read)
POST /dashboard/{account_id}/gateways/{id}                     save the settings             (edit)
POST /dashboard/{account_id}/gateways/{id}/spend-rules         add a spend-limit rule        (edit)
POST /dashboard/{account_id}/gateways/{id}/spend-rules/remove  remove one                    (edit)
POST /dashboard/{account_id}/gateways/{id}/spend-limits        turn enforcement on or off    (edit)
GET  /dashboard/{account_id}/gateways/{id}/delete              the confirm step              (edit)
POST /dashboard/{account_id}/gateways/{id}/delete              delete it, and its logs       (edit)

The pages write through `tollgate.gateway_writes`, as the management API's routes do (the same
store calls, the same caches dropped), so the data plane sees a change at once; what they store
has passed the API's own validators (`gateways_forms`). A gateway id that is malformed, unknown,
or another account's is a 404 page.

A settings save carries the version it was read at (`modified_at`): a save over a gateway changed
meanwhile (by the API, or another tab) is refused with 409 instead of silently undoing that change.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.billing import windows
from tollgate.billing.limits import rule_key
from tollgate.dashboard.core import DashboardCore, Viewer
from tollgate.dashboard.gateways_forms import (
    BOUNDS,
    OPTIONS,
    FormErrors,
    parse_new_gateway,
    parse_settings,
    settings_values,
    with_rule_added,
    with_rule_removed,
    with_spend_limits_enabled,
)
from tollgate.dashboard.gateways_view import (
    RuleView,
    curl_example,
    endpoints,
    glance,
    is_split,
    provider_urls,
    rule_view,
    when,
)
from tollgate.dashboard.web import BASE, redirect
from tollgate.errors import InvalidRequest
from tollgate.gateway_config import GATEWAY_ID_MAX_LENGTH, SPEND_RULES_MAX, validate_gateway_id
from tollgate.gateway_writes import GatewayWrites
from tollgate.store import GatewayRecord
from tollgate.store import gateways as gateway_repo
from tollgate.store import limits as limit_repo
from tollgate.store import logs as log_repo

PER_PAGE = 50
MAX_PAGE = 100_000  # keeps the offset a sane integer for the database
# Notices after a change, chosen by a code in the redirect's URL (never text from the URL): the
# card it shows in ("" for the top of the page), and the words. The redirect's anchor is the card.
DONE = {
    "created": ("", "Gateway created with the default settings. Change them below."),
    "saved": ("settings", "Settings saved. They apply to the next request."),
    "rule-added": ("spend", "Spend-limit rule added."),
    "rule-removed": ("spend", "Spend-limit rule removed."),
    "enforced": ("spend", "Spend limits are on: the rules below cap this gateway's spend."),
    "not-enforced": ("spend", "Spend limits are off: the rules are kept but cap nothing."),
}
RULE_DEFAULTS = {"rule_window": "86400", "rule_technique": "sliding", "enable_spend_limits": "on"}
STALE_MESSAGE = (
    "This gateway was changed elsewhere (through the API or another tab) after you opened this "
    "page, so nothing was saved. The page now shows the current settings: make your change again."
)


def _gateway_id(request: Request) -> str | None:
    """The URL's gateway id when well-formed (a malformed one cannot exist: a 404)."""
    raw = request.path_params.get("gateway_id", "")
    try:
        return validate_gateway_id(raw)
    except InvalidRequest:
        return None


def _version(record: GatewayRecord) -> str:
    return record.modified_at.isoformat()


class GatewaysPage:
    def __init__(self, core: DashboardCore) -> None:
        self.core = core
        self.services = core.services
        self.writes = GatewayWrites(core.services)

    def _base_url(self, request: Request) -> str:
        """The public base URL, as `GET gateways/{id}/url/{provider}` builds it."""
        configured = self.services.settings.server.public_url
        return configured or f"{request.url.scheme}://{request.url.netloc}"

    async def _lookup(self, request: Request, viewer: Viewer) -> GatewayRecord | None:
        """The URL's gateway in the viewer's account; None when malformed or not there."""
        gateway_id = _gateway_id(request)
        if gateway_id is None:
            return None
        return await gateway_repo.get_gateway(self.services.store, viewer.account.id, gateway_id)

    def _gone(self, request: Request, gateway_id: str | None) -> Response:
        """The 404 page for a gateway the account does not have (checked after the viewer, so
        the URL's account is the viewer's), with the way back to the list."""
        if gateway_id is None:
            message = (
                "There is no such gateway: gateway ids are lowercase letters, digits, '-' and "
                "'_'. The Gateways page lists this account's gateways."
            )
        else:
            message = (
                f"There is no gateway named '{gateway_id}' in this account. It may have been "
                "deleted; the Gateways page lists the ones that exist."
            )
        home = f"{BASE}/{request.path_params['account_id']}/gateways"
        context = {"title": "Gateway not found", "message": message, "home": home, "status": 404}
        return self.core.pages.render("error.html", context, status=404)

    # --- the list and create ------------------------------------------------------------------

    async def show_list(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        notice = None
        deleted = request.query_params.get("deleted", "")
        if deleted:
            try:
                notice = f"Gateway '{validate_gateway_id(deleted)}' and its logs were deleted."
            except InvalidRequest:
                notice = None
        try:
            page = min(max(1, int(request.query_params.get("page", "1"))), MAX_PAGE)
        except ValueError:
            page = 1
        return await self.render_list(viewer, notice=notice, page=page)

    async def render_list(
        self,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        page: int = 1,
        status: int = 200,
    ) -> Response:
        found = await gateway_repo.list_gateways(
            self.services.store, viewer.account.id, offset=(page - 1) * PER_PAGE, limit=PER_PAGE
        )
        rows = [(record, when(record.created_at), glance(record.config)) for record in found.items]
        context = self.core.shell(
            viewer,
            "gateways",
            rows=rows,
            total=found.total,
            page=page,
            has_more=page * PER_PAGE < found.total,
            notice=notice,
            error=error,
            errors=errors or {},
            form=form or {},
            id_max=GATEWAY_ID_MAX_LENGTH,
        )
        return self.core.pages.render("gateways_list.html", context, status=status)

    async def _rerender_list(self, viewer: Viewer, error: str, status: int) -> Response:
        return await self.render_list(viewer, error=error, status=status)

    async def create(self, request: Request) -> Response:
        posted = await self.core.posted(request, self._rerender_list, what="create a gateway")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        try:
            gateway_id, config = parse_new_gateway(form)
        except FormErrors as exc:
            return await self.render_list(viewer, errors=exc.errors, form=form, status=400)
        try:
            await self.writes.create(viewer.account.id, gateway_id, config)
        except gateway_repo.GatewayExists:
            message = f"A gateway named '{gateway_id}' exists already: choose another id."
            errors = {"id": message}
            return await self.render_list(viewer, errors=errors, form=form, status=409)
        return redirect(f"{viewer.url}/gateways/{gateway_id}?done=created")

    # --- the settings page --------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        card, notice = DONE.get(request.query_params.get("done", ""), ("", None))
        return await self.render(request, viewer, notice=notice, notice_in=card)

    async def render(
        self,
        request: Request,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        rule_errors: dict[str, str] | None = None,
        rule_form: dict[str, str] | None = None,
        in_spend: bool = False,
        notice_in: str = "",
        status: int = 200,
    ) -> Response:
        record = await self._lookup(request, viewer)
        if record is None:
            return self._gone(request, _gateway_id(request))
        spend = record.config.get("spend_limits") or {"enabled": False, "rules": []}
        base = self._base_url(request)
        account_id = viewer.account.id
        context = self.core.shell(
            viewer,
            "gateways",
            gateway=record,
            created=when(record.created_at),
            modified=when(record.modified_at),
            version=_version(record),
            seen=glance(record.config),
            values=form if form is not None else settings_values(record.config),
            errors=errors or {},
            spend_enabled=bool(spend.get("enabled")),
            rules=await self._rule_views(account_id, record.id, spend.get("rules", [])),
            rules_max=SPEND_RULES_MAX,
            rule_values=rule_form if rule_form is not None else RULE_DEFAULTS,
            rule_errors=rule_errors or {},
            endpoints=endpoints(base, account_id, record.id),
            providers=provider_urls(base, account_id, record.id),
            curl=curl_example(base, account_id, record.id),
            options=OPTIONS,
            bounds=BOUNDS,
            notice=notice if not notice_in else None,
            notice_in=notice_in,
            card_notice=notice if notice_in else None,
            # A message about a form shows in that form's card: the forms post to an anchor there.
            settings_error=None if in_spend else error,
            spend_error=error if in_spend else None,
        )
        return self.core.pages.render("gateways_settings.html", context, status=status)

    async def _rule_views(
        self, account_id: str, gateway_id: str, rules: list[dict[str, Any]]
    ) -> list[RuleView]:
        """Each rule with what its current window has counted: the figure admission compares
        with the rule's limit (held and charged spend), read as `overview` reads the account
        limit's. A rule split by metadata has a budget per value: no one figure."""
        now = self.services.topups.clock()
        views = []
        for rule in rules:
            spent = None
            if not is_split(rule):
                seconds = int(rule["window"])
                fixed = rule.get("technique") == "fixed"
                window = windows.Window.fixed(seconds) if fixed else windows.Window.sliding(seconds)
                current = windows.span(window, now)
                key = rule_key(account_id, gateway_id, str(rule["id"]), [])
                spent = await limit_repo.window_spend(
                    self.services.store, key, current.count_from, current.count_until
                )
            views.append(rule_view(rule, spent))
        return views

    async def _editable(
        self, request: Request, what: str, *, in_spend: bool = True
    ) -> tuple[Viewer, dict[str, str], GatewayRecord] | Response:
        """A post's viewer, form and the URL's gateway, or the refusal (nothing changed)."""

        async def rerender(viewer: Viewer, error: str, status: int) -> Response:
            return await self.render(request, viewer, error=error, in_spend=in_spend, status=status)

        posted = await self.core.posted(request, rerender, what=what)
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        record = await self._lookup(request, viewer)
        if record is None:
            return self._gone(request, _gateway_id(request))
        return viewer, form, record

    async def _store(
        self, request: Request, viewer: Viewer, record: GatewayRecord, config: dict[str, Any]
    ) -> Response | None:
        """Store `config`; the 404 page if the gateway went meanwhile, else None."""
        if await self.writes.update(viewer.account.id, record.id, config) is None:
            return self._gone(request, record.id)
        return None

    def _done(self, viewer: Viewer, record: GatewayRecord, code: str) -> Response:
        return redirect(f"{viewer.url}/gateways/{record.id}?done={code}#{DONE[code][0]}")

    async def save(self, request: Request) -> Response:
        posted = await self._editable(request, "change a gateway's settings", in_spend=False)
        if isinstance(posted, Response):
            return posted
        viewer, form, record = posted
        if form.get("version") != _version(record):
            return await self.render(request, viewer, error=STALE_MESSAGE, status=409)
        try:
            config = parse_settings(form, record.config, record.id)
        except FormErrors as exc:
            message = "Some settings need fixing (marked below). Nothing was saved."
            return await self.render(
                request, viewer, error=message, errors=exc.errors, form=form, status=400
            )
        except InvalidRequest as exc:  # the API's validators: a case the form's checks missed
            error = f"Nothing was saved: {exc.message}."
            return await self.render(request, viewer, error=error, form=form, status=400)
        return await self._store(request, viewer, record, config) or self._done(
            viewer, record, "saved"
        )

    async def add_rule(self, request: Request) -> Response:
        posted = await self._editable(request, "add a spend-limit rule")
        if isinstance(posted, Response):
            return posted
        viewer, form, record = posted
        try:
            config = with_rule_added(record.config, form, record.id)
        except FormErrors as exc:
            return await self.render(
                request, viewer, rule_errors=exc.errors, rule_form=form, status=400
            )
        except InvalidRequest as exc:  # the API's validators: a case the form's checks missed
            error = f"The rule was not added: {exc.message}."
            return await self.render(
                request, viewer, error=error, rule_form=form, in_spend=True, status=400
            )
        return await self._store(request, viewer, record, config) or self._done(
            viewer, record, "rule-added"
        )

    async def remove_rule(self, request: Request) -> Response:
        posted = await self._editable(request, "remove a spend-limit rule")
        if isinstance(posted, Response):
            return posted
        viewer, form, record = posted
        try:
            config = with_rule_removed(record.config, form.get("rule_id", ""), record.id)
        except KeyError:
            error = "That rule no longer exists (removed elsewhere?). Nothing was changed."
            return await self.render(request, viewer, error=error, in_spend=True, status=404)
        return await self._store(request, viewer, record, config) or self._done(
            viewer, record, "rule-removed"
        )

    async def enforce(self, request: Request) -> Response:
        posted = await self._editable(request, "turn spend limits on or off")
        if isinstance(posted, Response):
            return posted
        viewer, form, record = posted
        enabled = form.get("enabled") == "on"
        config = with_spend_limits_enabled(record.config, enabled, record.id)
        return await self._store(request, viewer, record, config) or self._done(
            viewer, record, "enforced" if enabled else "not-enforced"
        )

    # --- delete, behind a confirm step --------------------------------------------------------

    async def confirm_delete(self, request: Request) -> Response:
        viewer = await self.core.viewer(request, "edit")
        if not isinstance(viewer, Viewer):
            return viewer
        return await self.render_confirm(request, viewer)

    async def render_confirm(
        self, request: Request, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        record = await self._lookup(request, viewer)
        if record is None:
            return self._gone(request, _gateway_id(request))
        logs = await log_repo.count_gateway_logs(self.services.store, viewer.account.id, record.id)
        context = self.core.shell(viewer, "gateways", gateway=record, logs=logs, error=error)
        return self.core.pages.render("gateways_delete.html", context, status=status)

    async def delete(self, request: Request) -> Response:
        async def rerender(viewer: Viewer, error: str, status: int) -> Response:
            return await self.render_confirm(request, viewer, error=error, status=status)

        posted = await self.core.posted(request, rerender, what="delete a gateway")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        gateway_id = _gateway_id(request)
        if gateway_id is None:
            return self._gone(request, None)
        if form.get("confirm") != "delete":  # only the confirm page's button deletes
            return redirect(f"{viewer.url}/gateways/{gateway_id}/delete")
        if await self.writes.delete(viewer.account.id, gateway_id) is None:
            return self._gone(request, gateway_id)
        return redirect(f"{viewer.url}/gateways?deleted={gateway_id}")


def routes(core: DashboardCore) -> list[Route]:
    page = GatewaysPage(core)
    one = "/{account_id}/gateways/{gateway_id}"
    return [
        Route("/{account_id}/gateways", page.show_list, methods=["GET"]),
        Route("/{account_id}/gateways", page.create, methods=["POST"]),
        Route(one, page.show, methods=["GET"]),
        Route(one, page.save, methods=["POST"]),
        Route(f"{one}/spend-rules", page.add_rule, methods=["POST"]),
        Route(f"{one}/spend-rules/remove", page.remove_rule, methods=["POST"]),
        Route(f"{one}/spend-limits", page.enforce, methods=["POST"]),
        Route(f"{one}/delete", page.confirm_delete, methods=["GET"]),
        Route(f"{one}/delete", page.delete, methods=["POST"]),
    ]
