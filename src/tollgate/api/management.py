"""The gateways management API under `/client/v4/accounts/{account_id}/ai-gateway`.

Cloudflare's endpoints, as the official `cloudflare` SDK (`client.ai_gateway`) calls them:

    GET    /gateways?page&per_page&search         read  list, newest first; search: id contains
    POST   /gateways                              edit  create
    GET    /gateways/{id}                         read  fetch
    PUT    /gateways/{id}                         edit  replace every setting (the id stays)
    DELETE /gateways/{id}                         edit  delete; returns the deleted gateway
    GET    /gateways/{gateway_id}/url/{provider}  read  the URL as a string (below)

The URL is `{public base}/v1/{account_id}/{gateway_id}/{provider}`, where the public base is
`[server] public_url` or else the base URL the request came to.

Every response is the Cloudflare v4 envelope. Checks run in this order, so that nothing about an
account leaks to a caller who may not see it: the bearer token (401 `missing_token` /
`invalid_token`), the account id's format (404), the token's account and permission (403), then
the body (400), then the store (404 / 409).

Decisions where Cloudflare's documents are silent (body validation decisions are listed in
`tollgate.gateway_config`):

- A gateway named `default` may be created explicitly (409 if it already exists, for example
  because a data-plane request created it). It is the account's default gateway either way, so
  `is_default` is true exactly for the id `default`, however it was created.
- There is no limit on the number of gateways per account (Cloudflare's 10/20 is a plan limit).
- `per_page` is 1 to 50 (default 20); `page` starts at 1; a page past the end is empty.
- `url/{provider}` answers for a provider tollgate serves (the registry's slugs, `workers-ai`,
  `custom-{slug}`, and `compat` for the unified API), 404 otherwise; and for an existing
  gateway, or `default` (which the first authenticated data-plane request creates).
- Create, update and delete drop the data plane's cached copy of the gateway at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate.api.auth import authorize_api_call
from tollgate.api.envelope import (
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    cloudflare_response,
    page_request,
    read_json_body,
    timestamp,
)
from tollgate.api.openapi import error_responses, json_body
from tollgate.errors import (
    Conflict,
    NotFound,
)
from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.gateway_config import (
    REQUIRED_FIELDS,
    SETTINGS,
    default_gateway_config,
    parse_gateway_create,
    parse_gateway_update,
)
from tollgate.gateway_writes import GatewayWrites
from tollgate.ids import CUSTOM_PROVIDER
from tollgate.providers.registry import PROVIDERS
from tollgate.services import Services
from tollgate.store import GatewayRecord
from tollgate.store import gateways as gateway_repo

# Providers the data plane serves beyond the registry's rows (PRODUCT.md §2.1).
_EXTRA_PROVIDERS = frozenset({"workers-ai", "compat"})


def gateway_object(record: GatewayRecord) -> dict[str, object]:
    """The gateway as the API shows it: id, every setting, timestamps, `is_default`."""
    body: dict[str, object] = {"id": record.id}
    body.update(default_gateway_config())  # settings added after this gateway was stored
    body.update(record.config)
    body["created_at"] = timestamp(record.created_at)
    body["modified_at"] = timestamp(record.modified_at)
    body["is_default"] = record.is_default
    return body


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


class GatewayRoutes:
    """The handlers; `management_router` mounts them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.writes = GatewayWrites(services)

    async def _authorize(self, request: Request, account_id: str, permission: str) -> None:
        await authorize_api_call(
            self.services.tokens,
            request.headers.get("authorization"),
            account_id,
            permission,
            sent_global_key="x-auth-key" in request.headers,
        )

    async def _json_body(self, request: Request) -> object:
        limit = self.services.settings.server.max_body_bytes
        return await read_json_body(request, limit, "the gateway settings")

    async def _existing(self, account_id: str, gateway_id: str) -> GatewayRecord:
        record = await gateway_repo.get_gateway(self.services.store, account_id, gateway_id)
        if record is None:
            raise _gateway_not_found(account_id, gateway_id)
        return record

    async def list_gateways(self, request: Request, account_id: str) -> Response:
        await self._authorize(request, account_id, "read")
        paging = page_request(request.query_params)
        search = request.query_params.get("search") or None
        found = await gateway_repo.list_gateways(
            self.services.store,
            account_id,
            search=search.lower() if search else None,
            offset=paging.offset,
            limit=paging.per_page,
        )
        return cloudflare_response(
            [gateway_object(r) for r in found.items],
            result_info=paging.result_info(len(found.items), found.total),
        )

    async def create_gateway(self, request: Request, account_id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        gateway_id, config = parse_gateway_create(await self._json_body(request))
        try:
            record = await self.writes.create(account_id, gateway_id, config)
        except gateway_repo.GatewayExists:
            raise Conflict(
                f"A gateway named '{gateway_id}' already exists in this account. Choose another "
                f"id, or change it with PUT .../ai-gateway/gateways/{gateway_id}.",
                code="already_exists",
                param="id",
            ) from None
        return cloudflare_response(gateway_object(record))

    async def get_gateway(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "read")
        return cloudflare_response(gateway_object(await self._existing(account_id, id)))

    async def update_gateway(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        config = parse_gateway_update(await self._json_body(request), id)
        record = await self.writes.update(account_id, id, config)
        if record is None:
            raise _gateway_not_found(account_id, id)
        return cloudflare_response(gateway_object(record))

    async def delete_gateway(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        record = await self.writes.delete(account_id, id)
        if record is None:
            raise _gateway_not_found(account_id, id)
        return cloudflare_response(gateway_object(record))

    async def gateway_url(
        self, request: Request, account_id: str, gateway_id: str, provider: str
    ) -> Response:
        await self._authorize(request, account_id, "read")
        if not (
            provider in PROVIDERS
            or provider in _EXTRA_PROVIDERS
            or CUSTOM_PROVIDER.fullmatch(provider)
        ):
            known = ", ".join(sorted({*PROVIDERS, *_EXTRA_PROVIDERS}))
            raise NotFound(
                f"Unknown provider '{_shown(provider)}'. Known providers: {known}, "
                "and custom-{slug}.",
                code="provider_not_found",
            )
        if gateway_id != DEFAULT_GATEWAY_ID:
            await self._existing(account_id, gateway_id)
        base = self.services.settings.server.public_url or str(request.base_url)
        return cloudflare_response(f"{base.rstrip('/')}/v1/{account_id}/{gateway_id}/{provider}")


def _gateway_not_found(account_id: str, gateway_id: str) -> NotFound:
    return NotFound(
        f"Gateway '{_shown(gateway_id)}' does not exist in account {account_id}. List the "
        "account's gateways with GET .../ai-gateway/gateways.",
        code="gateway_not_found",
    )


# The handlers read the query and body themselves (so authentication comes first and errors
# name fields the Cloudflare way); these describe them in /openapi.json.
_LIST_QUERY: dict[str, Any] = {
    "parameters": [
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
        {
            "name": "per_page",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PER_PAGE,
                "default": DEFAULT_PER_PAGE,
            },
        },
        {
            "name": "search",
            "in": "query",
            "schema": {"type": "string"},
            "description": "id contains",
        },
    ]
}


def management_router(services: Services) -> APIRouter:
    routes = GatewayRoutes(services)
    router = APIRouter(prefix="/accounts/{account_id}/ai-gateway", tags=["ai-gateway"])
    add = router.add_api_route
    add(
        "/gateways",
        routes.list_gateways,
        methods=["GET"],
        summary="List gateways",
        openapi_extra=_LIST_QUERY,
    )
    add(
        "/gateways",
        routes.create_gateway,
        methods=["POST"],
        summary="Create a gateway",
        openapi_extra=json_body(("id", *SETTINGS), "id", *REQUIRED_FIELDS),
        responses=error_responses(409),
    )
    add("/gateways/{id}", routes.get_gateway, methods=["GET"], summary="Fetch a gateway")
    add(
        "/gateways/{id}",
        routes.update_gateway,
        methods=["PUT"],
        summary="Replace every setting of a gateway",
        openapi_extra=json_body(SETTINGS, *REQUIRED_FIELDS),
    )
    add("/gateways/{id}", routes.delete_gateway, methods=["DELETE"], summary="Delete a gateway")
    add(
        "/gateways/{gateway_id}/url/{provider}",
        routes.gateway_url,
        methods=["GET"],
        summary="The gateway's URL for a provider",
    )
    return router
