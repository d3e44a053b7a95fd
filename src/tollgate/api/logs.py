"""The Logs API under `/client/v4/accounts/{account_id}/ai-gateway/gateways/{gateway_id}`.

Cloudflare's endpoints, as the official `cloudflare` SDK (`client.ai_gateway.logs`) calls them:

    GET    /logs?filters...&page&per_page&order_by...  read  list, newest first
    DELETE /logs?filters...&limit&order_by...          edit  delete the matching logs
    GET    /logs/{id}                                  read  one log, with the bodies' heads
    PATCH  /logs/{id}                                  edit  set feedback, score, metadata
    GET    /logs/{id}/request                          read  the stored request body
    GET    /logs/{id}/response                         read  the stored response body

Checks run in the order of the gateways API (`tollgate.api.management`): the bearer token (401),
the account id (404), the token's account and permission (403), then the query or body (400,
`tollgate.api.log_query`), then the gateway and the log (404).

The log object carries Cloudflare's fields (`duration` in ms, `cost` in dollars, `metadata` as
a JSON string) plus tollgate's: `credential_source` (unified | byok | stored), `zdr`,
`cost_estimated`, `event_id`, `feedback`, `score`, `user_agent`, `request_size`,
`response_size`. The list's `result_info` adds the matching logs' min/max cost, duration and
tokens. `request` / `response` answer the body as it was stored, as JSON when it is complete
JSON and as text otherwise; a log kept without its payload answers 404 `log_body_not_collected`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate import money
from tollgate.api.envelope import cloudflare_response, page_request, read_json_body, timestamp
from tollgate.api.log_query import parse_delete_query, parse_list_query, parse_log_edit
from tollgate.api.management import GatewayRoutes
from tollgate.errors import NotFound
from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.services import Services
from tollgate.store import gateways as gateway_repo
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogRecord, LogStats

MAX_PER_PAGE = 50
EDIT_BODY_LIMIT = 64 * 1024


def _dollars(nanos: int | None) -> float | None:
    return money.to_dollars_float(nanos) if nanos is not None else None


def log_object(record: LogRecord, *, heads: bool = False) -> dict[str, object]:
    """The log as the API shows it (the SDK's `LogListResponse` / `LogGetResponse`)."""
    body: dict[str, object] = {
        "id": record.id,
        "created_at": timestamp(record.created_at),
        "provider": record.provider,
        "model": record.model,
        "model_type": record.model_type,
        "path": record.path,
        "request_type": record.request_type,
        "status_code": record.status_code,
        "success": record.success,
        "cached": record.cached,
        "duration": record.duration_ms,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "cost": _dollars(record.cost_nanos),
        "cost_estimated": record.cost_estimated,
        "custom_cost": record.custom_cost,
        "credential_source": record.credential_source,
        "zdr": record.zdr,
        "metadata": record.metadata,
        "event_id": record.event_id,
        "step": record.step,
        "user_agent": record.user_agent,
        "request_content_type": record.request_content_type,
        "response_content_type": record.response_content_type,
        "request_size": record.request_size,
        "response_size": record.response_size,
        "feedback": record.feedback,
        "score": record.score,
    }
    if heads:
        body["request_head"] = _text(record.request_body)
        body["request_head_complete"] = record.request_complete
        body["response_head"] = _text(record.response_body)
        body["response_head_complete"] = record.response_complete
    return body


def _text(body: bytes | None) -> str | None:
    return body.decode("utf-8", errors="replace") if body is not None else None


def stats_info(stats: LogStats) -> dict[str, object]:
    return {
        "min_cost": _dollars(stats.min_cost_nanos),
        "max_cost": _dollars(stats.max_cost_nanos),
        "min_duration": stats.min_duration,
        "max_duration": stats.max_duration,
        "min_tokens_in": stats.min_tokens_in,
        "max_tokens_in": stats.max_tokens_in,
        "min_tokens_out": stats.min_tokens_out,
        "max_tokens_out": stats.max_tokens_out,
        "min_total_tokens": stats.min_total_tokens,
        "max_total_tokens": stats.max_total_tokens,
    }


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


class LogRoutes:
    """The handlers; `logs_router` mounts them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._gateways = GatewayRoutes(services)  # one implementation of the auth order

    async def _authorize(self, request: Request, account_id: str, permission: str) -> None:
        await self._gateways._authorize(request, account_id, permission)

    async def _check_gateway(self, account_id: str, gateway_id: str) -> None:
        """404 for a gateway the account does not have (`default` exists once first used;
        before that it simply has no logs)."""
        if gateway_id == DEFAULT_GATEWAY_ID:
            return
        if await gateway_repo.get_gateway(self.services.store, account_id, gateway_id) is None:
            raise NotFound(
                f"Gateway '{_shown(gateway_id)}' does not exist in account {account_id}.",
                code="gateway_not_found",
            )

    async def _log(
        self, account_id: str, gateway_id: str, log_id: str, *, bodies: bool = False
    ) -> LogRecord:
        await self._check_gateway(account_id, gateway_id)
        record = await log_repo.get_log(
            self.services.store, account_id, gateway_id, log_id, bodies=bodies
        )
        if record is None:
            raise NotFound(
                f"Log '{_shown(log_id)}' does not exist in gateway '{gateway_id}' (the id is the "
                "cf-aig-log-id response header; a log is written within a moment of the "
                "response, unless logging was off for the request).",
                code="log_not_found",
            )
        return record

    async def list_logs(self, request: Request, account_id: str, gateway_id: str) -> Response:
        await self._authorize(request, account_id, "read")
        paging = page_request(request.query_params, max_per_page=MAX_PER_PAGE)
        query = parse_list_query(request.query_params.multi_items())
        await self._check_gateway(account_id, gateway_id)
        records, stats = await log_repo.list_logs(
            self.services.store,
            account_id,
            gateway_id,
            query,
            offset=paging.offset,
            limit=paging.per_page,
        )
        info: dict[str, object] = {**paging.result_info(len(records), stats.total)}
        info.update(stats_info(stats))
        return cloudflare_response([log_object(r) for r in records], result_info=info)

    async def delete_logs(self, request: Request, account_id: str, gateway_id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        query, limit = parse_delete_query(request.query_params.multi_items())
        await self._check_gateway(account_id, gateway_id)
        deleted = await log_repo.delete_logs(
            self.services.store, account_id, gateway_id, query, limit=limit
        )
        self.services.logs.forget_count(account_id, gateway_id)  # log_management counts again
        return cloudflare_response({"deleted": deleted})

    async def get_log(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "read")
        record = await self._log(account_id, gateway_id, id, bodies=True)
        return cloudflare_response(log_object(record, heads=True))

    async def edit_log(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "edit")
        changes = parse_log_edit(await read_json_body(request, EDIT_BODY_LIMIT, "the changes"))
        await self._log(account_id, gateway_id, id)
        record = await log_repo.edit_log(self.services.store, account_id, gateway_id, id, changes)
        if record is None:  # deleted in between
            raise NotFound(f"Log '{_shown(id)}' no longer exists.", code="log_not_found")
        return cloudflare_response(log_object(record))

    async def request_body(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "read")
        record = await self._log(account_id, gateway_id, id, bodies=True)
        return _body_response(
            record, record.request_body, record.request_complete, record.request_content_type
        )

    async def response_body(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "read")
        record = await self._log(account_id, gateway_id, id, bodies=True)
        return _body_response(
            record, record.response_body, record.response_complete, record.response_content_type
        )


def _body_response(
    record: LogRecord, body: bytes | None, complete: bool, content_type: str | None
) -> Response:
    if body is None:
        raise NotFound(
            f"Log '{record.id}' was kept without its request and response bodies "
            "(cf-aig-collect-log-payload: false).",
            code="log_body_not_collected",
        )
    is_json = (content_type or "").split(";")[0].strip().lower().endswith("json")
    media = "application/json" if complete and is_json else "text/plain; charset=utf-8"
    headers = {"x-tollgate-body-complete": "true" if complete else "false"}
    return Response(body, media_type=media, headers=headers)


# The logged bodies are served as they were sent, not in the v4 envelope (`_body_response`).
_RAW_BODY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The body as logged: JSON when it is complete JSON, else text",
        "content": {
            "application/json": {"schema": {}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


def logs_router(services: Services) -> APIRouter:
    """The Logs API routes; mount under `/client/v4`."""
    routes = LogRoutes(services)
    router = APIRouter(
        prefix="/accounts/{account_id}/ai-gateway/gateways/{gateway_id}", tags=["ai-gateway"]
    )
    add = router.add_api_route
    add("/logs", routes.list_logs, methods=["GET"], summary="List request logs")
    add("/logs", routes.delete_logs, methods=["DELETE"], summary="Delete request logs")
    add("/logs/{id}", routes.get_log, methods=["GET"], summary="Fetch a request log")
    add("/logs/{id}", routes.edit_log, methods=["PATCH"], summary="Set feedback, score, metadata")
    for part, handler in (("request", routes.request_body), ("response", routes.response_body)):
        summary = f"The {part} body"
        add(f"/logs/{{id}}/{part}", handler, methods=["GET"], summary=summary, responses=_RAW_BODY)
    return router
