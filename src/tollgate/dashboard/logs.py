"""The Logs pages (issue: dashboard item 6): a gateway's request logs, filtered and paged, and one
log in full with its bodies and feedback.

GET  /dashboard/{account_id}/logs                                 the table, filters, paging (read)
GET  /dashboard/{account_id}/logs/{gateway_id}/{log_id}           one log, its bodies     (read)
POST /dashboard/{account_id}/logs/{gateway_id}/{log_id}/feedback  thumbs up/down, score   (edit)

The table reads through the Logs API's functions: the filter form becomes the API's own query
(`logs_filters`, then `tollgate.api.log_query.parse_list_query`) and `store.logs.list_logs` runs
it; feedback goes through `parse_log_edit` and `store.logs.edit_log`, as `PATCH .../logs/{id}`.
An unknown gateway or a log that is not in the account's gateway is a 404 page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.api.log_query import parse_log_edit
from tollgate.dashboard.core import DashboardCore, Viewer
from tollgate.dashboard.logs_filters import (
    DEFAULT_PER_PAGE,
    PER_PAGE_CHOICES,
    FilterErrors,
    filter_query_string,
    is_filtering,
    parse_log_filters,
    read_filter_form,
)
from tollgate.dashboard.logs_view import (
    body_view,
    detail_facts,
    feedback_words,
    log_row,
    log_time,
    metadata_entries,
    score_text,
    status_text,
)
from tollgate.dashboard.web import redirect
from tollgate.errors import InvalidRequest
from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.store import gateways as gateway_repo
from tollgate.store import logs as log_repo
from tollgate.store.models import GatewayRecord

GATEWAYS_LISTED = 500  # the selector's choices; an account with more is unusual
# The feedback form's buttons: the PATCH body each asks for, and the notice it leaves (`SAVED`).
FEEDBACK_ACTIONS: dict[str, tuple[dict[str, object], str]] = {
    "up": ({"feedback": 1}, "feedback"),
    "down": ({"feedback": -1}, "feedback"),
    "clear-feedback": ({"feedback": None}, "feedback-cleared"),
    "clear-score": ({"score": None}, "score-cleared"),
}
SAVED = {
    "feedback": "Feedback saved.",
    "feedback-cleared": "Feedback cleared.",
    "score": "Score saved.",
    "score-cleared": "Score cleared.",
}
SCORE_MAX = 100


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


def parse_score(raw: str) -> int:
    """A score typed into the feedback form: a whole number from 0 to 100."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > SCORE_MAX:
        raise ValueError(f"Enter the score as a whole number from 0 to {SCORE_MAX}, like 80.")
    return int(text)


async def account_gateways(core: DashboardCore, account_id: str) -> list[GatewayRecord]:
    """The account's gateways for the selector: `default` first, then by id."""
    page = await gateway_repo.list_gateways(core.services.store, account_id, limit=GATEWAYS_LISTED)
    return sorted(page.items, key=lambda g: (g.id != DEFAULT_GATEWAY_ID, g.id))


class LogsPage:
    """The Logs table, one log's detail, and the feedback form."""

    def __init__(self, core: DashboardCore) -> None:
        self.core = core

    def _list_url(self, viewer: Viewer, query: str = "") -> str:
        return f"{viewer.url}/logs" + (f"?{query}" if query else "")

    def _log_url(self, viewer: Viewer, gateway_id: str, log_id: str) -> str:
        return f"{viewer.url}/logs/{quote(gateway_id, safe='')}/{quote(log_id, safe='')}"

    # --- the table ---------------------------------------------------------------------------

    async def show_list(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        form = read_filter_form(request.query_params)
        gateways = await account_gateways(self.core, viewer.account.id)
        ids = [g.id for g in gateways]
        context: dict[str, Any] = {
            "form": form,
            "gateways": ids,
            "gateway": None,
            "collect_logs": True,
            "errors": {},
            "rows": None,
            "per_page_choices": PER_PAGE_CHOICES,
            "first_request": self._first_request(request, viewer, DEFAULT_GATEWAY_ID),
            "filtering": is_filtering(form),
            "list_url": self._list_url(viewer),
        }
        if not gateways:
            return self._render_list(viewer, context)
        chosen = form.get("gateway") or (
            DEFAULT_GATEWAY_ID if DEFAULT_GATEWAY_ID in ids else ids[0]
        )
        if chosen not in ids:
            return self.core.not_found(
                request,
                f"This account has no gateway '{_shown(chosen)}', so it has no logs to show. "
                "Choose one of your gateways on the Logs page.",
            )
        gateway = gateways[ids.index(chosen)]
        context["gateway"] = chosen
        context["first_request"] = self._first_request(request, viewer, chosen)
        context["collect_logs"] = gateway.config.get("collect_logs", True) is not False
        try:
            parsed = parse_log_filters(form)
        except FilterErrors as exc:
            context["errors"] = exc.errors
            return self._render_list(viewer, context, status=400)
        store = self.core.services.store
        records, stats = await log_repo.list_logs(
            store,
            viewer.account.id,
            chosen,
            parsed.query,
            offset=parsed.offset,
            limit=parsed.per_page,
        )
        gateway_total = stats.total
        if parsed.filtering and stats.total == 0:
            gateway_total = await log_repo.count_gateway_logs(store, viewer.account.id, chosen)
        pages = max(1, -(-stats.total // parsed.per_page))
        base = {**form, "gateway": chosen}
        context.update(
            rows=[log_row(r, self._log_url(viewer, chosen, r.id)) for r in records],
            total=stats.total,
            gateway_total=gateway_total,
            page=parsed.page,
            pages=pages,
            per_page=parsed.per_page,
            first_shown=parsed.offset + 1,
            last_shown=parsed.offset + len(records),
            previous_url=self._page_url(viewer, base, parsed.page - 1) if parsed.page > 1 else None,
            next_url=self._page_url(viewer, base, parsed.page + 1) if parsed.page < pages else None,
            first_url=self._page_url(viewer, base, 1),
        )
        return self._render_list(viewer, context)

    def _page_url(self, viewer: Viewer, form: dict[str, str], page: int) -> str:
        return self._list_url(viewer, filter_query_string(form, page=page if page > 1 else None))

    def _first_request(self, request: Request, viewer: Viewer, gateway_id: str) -> str:
        """A curl command that sends a logged request through `gateway_id` (Unified Billing:
        the tollgate token pays from the account's credits)."""
        origin = str(request.base_url).rstrip("/")
        path = f"/v1/{viewer.account.id}/{quote(gateway_id, safe='')}/openai/chat/completions"
        return (
            f"curl {origin}{path} \\\n"
            '  -H "cf-aig-authorization: Bearer $TG_TOKEN" \\\n'
            '  -H "content-type: application/json" \\\n'
            '  -d \'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}\''
        )

    def _render_list(
        self, viewer: Viewer, context: dict[str, Any], *, status: int = 200
    ) -> Response:
        shell = self.core.shell(viewer, "logs", **context, default_per_page=DEFAULT_PER_PAGE)
        return self.core.pages.render("logs.html", shell, status=status)

    # --- one log -----------------------------------------------------------------------------

    async def show_log(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        notice = SAVED.get(request.query_params.get("saved", ""))
        return await self.render_log(request, viewer, notice=notice)

    async def _missing(self, request: Request, viewer: Viewer) -> Response | None:
        """The 404 page when the URL's gateway is not the account's, else None."""
        gateway_id = request.path_params["gateway_id"]
        store = self.core.services.store
        if gateway_id == DEFAULT_GATEWAY_ID:  # it has no logs until its first request
            return None
        if await gateway_repo.get_gateway(store, viewer.account.id, gateway_id) is None:
            return self.core.not_found(
                request,
                f"This account has no gateway '{_shown(gateway_id)}', so there is no such log. "
                "Open the Logs page and choose a log from the list.",
            )
        return None

    def _no_log(self, request: Request) -> Response:
        gateway_id, log_id = request.path_params["gateway_id"], request.path_params["log_id"]
        return self.core.not_found(
            request,
            f"There is no log '{_shown(log_id)}' in gateway '{_shown(gateway_id)}' of this "
            "account. It may have been deleted, or belong to another gateway. Open the Logs page "
            "and choose a log from the list.",
        )

    async def render_log(
        self,
        request: Request,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        score_error: str | None = None,
        typed_score: str | None = None,
        status: int = 200,
    ) -> Response:
        if (missing := await self._missing(request, viewer)) is not None:
            return missing
        gateway_id, log_id = request.path_params["gateway_id"], request.path_params["log_id"]
        record = await log_repo.get_log(
            self.core.services.store, viewer.account.id, gateway_id, log_id, bodies=True
        )
        if record is None:
            return self._no_log(request)
        cap = self.core.services.settings.logs.body_max_bytes
        context = self.core.shell(
            viewer,
            "logs",
            record=record,
            facts=detail_facts(record),
            status=status_text(record),
            time=log_time(record.created_at),
            metadata=metadata_entries(record.metadata),
            request_body=body_view(
                record.request_body, record.request_complete, record.request_size, cap
            ),
            response_body=body_view(
                record.response_body, record.response_complete, record.response_size, cap
            ),
            feedback=feedback_words(record.feedback),
            score=score_text(record.score),
            log_url=self._log_url(viewer, gateway_id, log_id),
            back_url=self._list_url(viewer, filter_query_string({"gateway": gateway_id})),
            notice=notice,
            error=error,
            score_error=score_error,
            typed_score=typed_score,
        )
        return self.core.pages.render("logs_detail.html", context, status=status)

    # --- feedback ----------------------------------------------------------------------------

    async def save_feedback(self, request: Request) -> Response:
        async def rerender(viewer: Viewer, error: str, status: int) -> Response:
            return await self.render_log(request, viewer, error=error, status=status)

        posted = await self.core.posted(request, rerender, what="give feedback on logs")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        action = form.get("action", "")
        body: dict[str, object]
        if action == "score":
            try:
                body, saved = {"score": parse_score(form.get("score", ""))}, "score"
            except ValueError as exc:
                typed = form.get("score", "")
                return await self.render_log(
                    request, viewer, score_error=str(exc), typed_score=typed, status=400
                )
        elif action in FEEDBACK_ACTIONS:
            body, saved = FEEDBACK_ACTIONS[action]
        else:
            return await rerender(viewer, "Choose thumbs up, thumbs down or a score.", 400)
        try:
            changes = parse_log_edit(body)  # the API's own check of a PATCH body
        except InvalidRequest as exc:
            return await rerender(viewer, f"That feedback was not saved: {exc.message}.", 400)
        if (missing := await self._missing(request, viewer)) is not None:
            return missing
        gateway_id, log_id = request.path_params["gateway_id"], request.path_params["log_id"]
        record = await log_repo.edit_log(
            self.core.services.store, viewer.account.id, gateway_id, log_id, changes
        )
        if record is None:
            return self._no_log(request)
        return redirect(f"{self._log_url(viewer, gateway_id, log_id)}?saved={saved}")


def routes(core: DashboardCore) -> list[Route]:
    page = LogsPage(core)
    return [
        Route("/{account_id}/logs", page.show_list, methods=["GET"]),
        Route("/{account_id}/logs/{gateway_id}/{log_id}", page.show_log, methods=["GET"]),
        Route(
            "/{account_id}/logs/{gateway_id}/{log_id}/feedback",
            page.save_feedback,
            methods=["POST"],
        ),
    ]
