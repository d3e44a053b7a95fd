"""The custom providers management API under `/client/v4/accounts/{account_id}/ai-gateway`.

Cloudflare's endpoints, as the official `cloudflare` SDK (`client.ai_gateway.custom_providers`)
calls them (the SDK has create, list, get and delete; PATCH is in Cloudflare's API):

    GET    /custom-providers?page&per_page&enable&beta&search&order_by   read  list
    POST   /custom-providers                                            edit  create
    GET    /custom-providers/{id}                                       read  fetch
    PATCH  /custom-providers/{id}                                       edit  change the fields sent
    DELETE /custom-providers/{id}                                       edit  delete; returns it

A provider is reached on the data plane as `custom-{slug}`. Every response is the Cloudflare v4
envelope. Checks run in the order of the gateways API (`tollgate.api.management`), whose
`_authorize` this module reuses: the bearer token (401), the account id's format (404), the
token's account and permission (403), then the query or body (400), then the store (404 / 409).

Decisions where Cloudflare's documents are silent (body and query decisions are listed in
`tollgate.custom_provider_config`):

- `per_page` is 1 to 100 (default 20); `page` starts at 1; a page past the end is empty.
- The object carries every field, null when unset. `logo` is always null: Cloudflare generates
  an SVG for its dashboard; tollgate has none to give. `headers` is echoed as stored, to any token
  with `read`, as Cloudflare's get does (its values may be credentials).
- A slug already used in the account is 409 `already_exists` naming the provider that holds it.
- Create, update and delete drop the data plane's cached copy at once (old and new slug).
- A `base_url` host name that resolves, when it is stored, to a loopback, private or other
  non-public address is a 400 (SSRF, `tollgate.netguard`), unless the operator allows that
  network. A name that does not resolve yet is accepted: the data plane checks every address
  again as it connects, whatever the name resolves to then.
- The `custom-providers/costs` endpoints are not implemented.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate.api.envelope import (
    DEFAULT_PER_PAGE,
    cloudflare_response,
    page_request,
    read_json_body,
    timestamp,
)
from tollgate.api.management import GatewayRoutes
from tollgate.api.openapi import error_responses, json_body
from tollgate.custom_provider_config import (
    DEFAULT_ORDER,
    FIELDS,
    ORDER_FIELDS,
    REQUIRED_FIELDS,
    parse_custom_provider_create,
    parse_custom_provider_update,
    parse_list_query,
    private_host_refused,
)
from tollgate.errors import Conflict, NotFound
from tollgate.netguard import AddressPolicy, resolves_to_refused
from tollgate.services import Services
from tollgate.store import custom_providers as custom_provider_repo
from tollgate.store.custom_providers import CustomProviderRecord, SlugTaken

MAX_PER_PAGE = 100


def custom_provider_object(record: CustomProviderRecord) -> dict[str, object]:
    """The custom provider as the API shows it (the SDK's `CustomProvider*Response`)."""
    return {
        "id": record.id,
        "name": record.name,
        "slug": record.slug,
        "base_url": record.base_url,
        "description": record.description,
        "link": record.link,
        "enable": record.enable,
        "beta": record.beta,
        "curl_example": record.curl_example,
        "js_example": record.js_example,
        "headers": record.headers,
        "logo": None,
        "position": record.position,
        "created_at": timestamp(record.created_at),
        "modified_at": timestamp(record.modified_at),
    }


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


class CustomProviderRoutes:
    """The handlers; `custom_providers_router` mounts them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._gateways = GatewayRoutes(services)  # one implementation of the auth order
        # Where account-chosen base URLs may point (tollgate.netguard): public hosts, and the
        # networks the operator allows.
        networks = services.settings.upstream.allowed_private_networks
        self._policy = AddressPolicy.from_settings(networks)

    async def _authorize(self, request: Request, account_id: str, permission: str) -> None:
        await self._gateways._authorize(request, account_id, permission)

    @property
    def _allow_http(self) -> bool:
        return self.services.settings.custom_providers.allow_http

    async def _check_resolved_host(self, fields: dict[str, Any]) -> None:
        """A new base_url whose host name resolves to a refused address: 400, stored nowhere."""
        if "base_url" not in fields:
            return
        parts = urlsplit(fields["base_url"])
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        if await resolves_to_refused(host, port, self._policy):
            raise private_host_refused("base_url", host, resolved=True)

    async def _json_body(self, request: Request) -> object:
        limit = self.services.settings.server.max_body_bytes
        return await read_json_body(request, limit, "the custom provider's fields")

    async def _slug_taken(self, account_id: str, slug: str) -> Conflict:
        holder = await custom_provider_repo.get_custom_provider_by_slug(
            self.services.store, account_id, slug
        )
        held_by = f" (custom provider {holder.id})" if holder is not None else ""
        return Conflict(
            f"The slug '{slug}' is already used in this account{held_by}: each custom provider "
            f"is reached as custom-{{slug}}, so slugs must be unique. Choose another slug.",
            code="already_exists",
            param="slug",
        )

    async def list_custom_providers(self, request: Request, account_id: str) -> Response:
        await self._authorize(request, account_id, "read")
        paging = page_request(request.query_params, max_per_page=MAX_PER_PAGE)
        query = parse_list_query(request.query_params)
        found = await custom_provider_repo.list_custom_providers(
            self.services.store,
            account_id,
            enable=query.enable,
            beta=query.beta,
            search=query.search,
            order_by=query.order_by,
            descending=query.descending,
            offset=paging.offset,
            limit=paging.per_page,
        )
        return cloudflare_response(
            [custom_provider_object(r) for r in found.items],
            result_info=paging.result_info(len(found.items), found.total),
        )

    async def create_custom_provider(self, request: Request, account_id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        fields = parse_custom_provider_create(
            await self._json_body(request), allow_http=self._allow_http, policy=self._policy
        )
        await self._check_resolved_host(fields)
        try:
            record = await custom_provider_repo.insert_custom_provider(
                self.services.store, account_id, fields
            )
        except SlugTaken:
            raise await self._slug_taken(account_id, fields["slug"]) from None
        # Drop a cached miss for this slug.
        self.services.custom_providers.invalidate(account_id, record.slug)
        return cloudflare_response(custom_provider_object(record))

    async def get_custom_provider(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "read")
        record = await custom_provider_repo.get_custom_provider(self.services.store, account_id, id)
        if record is None:
            raise _not_found(account_id, id)
        return cloudflare_response(custom_provider_object(record))

    async def update_custom_provider(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        changes = parse_custom_provider_update(
            await self._json_body(request), id, allow_http=self._allow_http, policy=self._policy
        )
        await self._check_resolved_host(changes)
        try:
            changed = await custom_provider_repo.update_custom_provider(
                self.services.store, account_id, id, changes
            )
        except SlugTaken:
            raise await self._slug_taken(account_id, changes["slug"]) from None
        if changed is None:
            raise _not_found(account_id, id)
        before, after = changed
        self.services.custom_providers.invalidate(account_id, before.slug)
        if after.slug != before.slug:
            self.services.custom_providers.invalidate(account_id, after.slug)
        return cloudflare_response(custom_provider_object(after))

    async def delete_custom_provider(self, request: Request, account_id: str, id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        record = await custom_provider_repo.delete_custom_provider(
            self.services.store, account_id, id
        )
        if record is None:
            raise _not_found(account_id, id)
        self.services.custom_providers.invalidate(account_id, record.slug)
        return cloudflare_response(custom_provider_object(record))


def _not_found(account_id: str, provider_id: str) -> NotFound:
    return NotFound(
        f"Custom provider '{_shown(provider_id)}' does not exist in account {account_id}. List "
        "the account's custom providers with GET .../ai-gateway/custom-providers.",
        code="custom_provider_not_found",
    )


# The handlers read the query and body themselves (so authentication comes first and errors
# name fields the Cloudflare way); these describe them in /openapi.json.
def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


_LIST_QUERY: dict[str, Any] = {
    "parameters": [
        _query("page", {"type": "integer", "minimum": 1, "default": 1}),
        _query(
            "per_page",
            {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE},
        ),
        _query("enable", {"type": "boolean"}),
        _query("beta", {"type": "boolean"}),
        _query("search", {"type": "string"}, "id, slug or name contains (ignoring case)"),
        _query(
            "order_by",
            {"type": "string", "default": DEFAULT_ORDER},
            f"one of {', '.join(ORDER_FIELDS)}, optionally followed by ASC or DESC",
        ),
    ]
}


def custom_providers_router(services: Services) -> APIRouter:
    """The custom providers routes; mount under `/client/v4`. Writes invalidate the data
    plane's cache (`services.custom_providers`), so they are seen at once."""
    routes = CustomProviderRoutes(services)
    router = APIRouter(prefix="/accounts/{account_id}/ai-gateway", tags=["ai-gateway"])
    add = router.add_api_route
    add(
        "/custom-providers",
        routes.list_custom_providers,
        methods=["GET"],
        summary="List custom providers",
        openapi_extra=_LIST_QUERY,
    )
    add(
        "/custom-providers",
        routes.create_custom_provider,
        methods=["POST"],
        summary="Create a custom provider",
        openapi_extra=json_body(FIELDS, *REQUIRED_FIELDS),
        responses=error_responses(409),
    )
    add(
        "/custom-providers/{id}",
        routes.get_custom_provider,
        methods=["GET"],
        summary="Fetch a custom provider",
    )
    add(
        "/custom-providers/{id}",
        routes.update_custom_provider,
        methods=["PATCH"],
        summary="Change some fields of a custom provider",
        openapi_extra=json_body(FIELDS),
        responses=error_responses(409),
    )
    add(
        "/custom-providers/{id}",
        routes.delete_custom_provider,
        methods=["DELETE"],
        summary="Delete a custom provider",
    )
    return router
