"""The account spending limit page (issue: dashboard item 5).

GET  /dashboard/{account_id}/limit   the limit, its window and what it has counted   (read)
POST /dashboard/{account_id}/limit   set it (amount, period, window) or remove it    (edit)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.api.billing_fields import MAX_LIMIT_CENTS, MIN_LIMIT_CENTS
from tollgate.dashboard.core import DashboardCore, Viewer, pick
from tollgate.dashboard.format import AmountError, parse_dollars_to_cents
from tollgate.dashboard.overview import load_overview
from tollgate.dashboard.web import redirect
from tollgate.money import from_cents
from tollgate.store import limits as limit_repo

DURATIONS = ("daily", "weekly", "monthly")
STRATEGIES = ("fixed", "sliding")


class LimitPage:
    def __init__(self, core: DashboardCore) -> None:
        self.core = core

    async def show(self, request: Request) -> Response:
        viewer = await self.core.viewer(request)
        if not isinstance(viewer, Viewer):
            return viewer
        notice = "Spending limit saved." if request.query_params.get("saved") else None
        if request.query_params.get("removed"):
            notice = "Spending limit removed. Spend is no longer capped."
        return await self.render(viewer, notice=notice)

    async def render(
        self,
        viewer: Viewer,
        *,
        notice: str | None = None,
        error: str | None = None,
        field_error: str | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        services = self.core.services
        data = await load_overview(services.store, services.topups, viewer.account)
        context = self.core.shell(
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
        return self.core.pages.render("limit.html", context, status=status)

    async def _rerender(self, viewer: Viewer, error: str, status: int) -> Response:
        return await self.render(viewer, error=error, status=status)

    async def save(self, request: Request) -> Response:
        posted = await self.core.posted(request, self._rerender, what="change the spending limit")
        if isinstance(posted, Response):
            return posted
        viewer, form = posted
        store, meter = self.core.services.store, self.core.services.meter
        if form.get("action") == "remove":
            await limit_repo.delete_account_limit(store, viewer.account.id)
            meter.forget_account_limit(viewer.account.id)
            return redirect(f"{viewer.url}/limit?removed=1")
        try:
            cents = parse_dollars_to_cents(
                form.get("amount", ""),
                field="the limit",
                minimum_cents=MIN_LIMIT_CENTS,
                maximum_cents=MAX_LIMIT_CENTS,
            )
            duration = pick(form.get("duration"), DURATIONS, "a period")
            strategy = pick(form.get("strategy"), STRATEGIES, "a window type")
        except AmountError as exc:
            return await self.render(viewer, field_error=str(exc), form=form, status=400)
        await limit_repo.set_account_limit(
            store, viewer.account.id, from_cents(cents), duration, strategy
        )
        meter.forget_account_limit(viewer.account.id)  # the data plane enforces it at once
        return redirect(f"{viewer.url}/limit?saved=1")


def routes(core: DashboardCore) -> list[Route]:
    page = LimitPage(core)
    return [
        Route("/{account_id}/limit", page.show, methods=["GET"]),
        Route("/{account_id}/limit", page.save, methods=["POST"]),
    ]
