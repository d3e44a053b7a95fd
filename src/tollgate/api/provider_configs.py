"""Stored provider keys (BYOK) under `/client/v4/accounts/{account_id}/ai-gateway/gateways/
{gateway_id}/provider_configs`, Cloudflare's endpoints (the `cloudflare` SDK has create and list;
the rest are in Cloudflare's API):

    GET    /provider_configs?page&per_page   read  list, by provider then alias
    POST   /provider_configs                 edit  store a key
    GET    /provider_configs/{id}            read  fetch
    PUT    /provider_configs/{id}            edit  rotate the key and/or change the fields sent
    DELETE /provider_configs/{id}            edit  delete; returns it

The object: `{id, gateway_id, alias, default_config, provider_slug, secret_id, secret_preview,
rate_limit, rate_limit_period, modified_at}`. The key itself is never returned, only a masked
`secret_preview`; it is stored sealed (`tollgate.features.stored_keys`). Checks run in the order
of the gateways API: token (401), account id (404), the token's account and permission (403),
the body (400), the gateway (404), then the store (404 / 409).

Decisions where Cloudflare's documents are silent:

- tollgate has no Secrets Store: the key is sent as `secret` and kept in tollgate's database,
  encrypted. `secret_id` is tollgate's id for the sealed key (new on every rotation); sending
  `secret_id` to reference a Secrets Store secret is a 400.
- `alias` defaults to `default`; (gateway, provider, alias) is unique (409 otherwise).
  `default_config` defaults to false. At most one key per (gateway, provider) is the default:
  marking one clears the others. A request without `cf-aig-byok-alias` uses the provider's
  `default_config` key, else the one aliased `default`.
- `provider_slug` is one of the registry's providers (not `custom-*`: custom providers carry
  their own headers) and cannot be changed by PUT.
- `rate_limit` / `rate_limit_period` (default 60) are stored and echoed, not enforced yet.
- Storing a key needs the operator's `operator.master_key`; without it, 503 naming the setting.
- `per_page` is 1 to 50 (default 20). Writes drop the data plane's cached keys of the gateway,
  so the next request in this process uses the new key, or none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate.api.envelope import cloudflare_response, page_request, read_json_body, timestamp
from tollgate.api.management import GatewayRoutes
from tollgate.api.openapi import error_responses, json_body
from tollgate.errors import Conflict, InvalidRequest, NotFound
from tollgate.features.stored_keys import ALIAS, ALIAS_RULE, DEFAULT_ALIAS, secret_preview
from tollgate.providers.registry import PROVIDERS
from tollgate.services import Services
from tollgate.store import provider_configs as config_repo
from tollgate.store._util import new_id
from tollgate.store.provider_configs import AliasTaken, ProviderConfigRecord

SECRET_MAX_LENGTH = 8192
DEFAULT_RATE_LIMIT_PERIOD = 60.0
_RATE_LIMIT_MAX = 1e12
CREATE_FIELDS = ("alias", "default_config", "provider_slug", "secret", "rate_limit",
                 "rate_limit_period")  # fmt: skip
# What a client may send back from an object it read; ignored on PUT.
READ_ONLY_FIELDS = frozenset({"id", "gateway_id", "secret_id", "secret_preview", "modified_at"})


def provider_config_object(record: ProviderConfigRecord) -> dict[str, object]:
    """The config as the API shows it (the SDK's `ProviderConfig*Response`): never the key."""
    return {
        "id": record.id,
        "gateway_id": record.gateway_id,
        "alias": record.alias,
        "default_config": record.default_config,
        "provider_slug": record.provider_slug,
        "secret_id": record.secret_id,
        "secret_preview": record.secret_preview,
        "rate_limit": record.rate_limit,
        "rate_limit_period": record.rate_limit_period,
        "modified_at": timestamp(record.modified_at),
    }


# --- body validation --------------------------------------------------------------------------


def _invalid(field: str, expected: str, shown: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: expected {expected}, got {shown}", param=field)


def _alias(value: object) -> str:
    if not isinstance(value, str) or not ALIAS.fullmatch(value):
        raise _invalid("alias", ALIAS_RULE, _show(value))
    return value


def _boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(field, "true or false", _show(value))
    return value


def _provider_slug(value: object) -> str:
    if not isinstance(value, str) or value not in PROVIDERS:
        raise _invalid("provider_slug", f"one of {', '.join(PROVIDERS)}", _show(value))
    return value


def _secret(value: object) -> str:
    """The provider key: it becomes a header value upstream, so no control characters."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > SECRET_MAX_LENGTH
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        or not value.isascii()
    ):
        # Never echo the value: it is (meant to be) a key.
        kind = f"a string of {len(value)} characters" if isinstance(value, str) else "not a string"
        raise _invalid(
            "secret",
            f"the provider's API key, 1 to {SECRET_MAX_LENGTH} printable ASCII characters",
            kind,
        )
    return value


def _number(value: object, field: str, *, positive: bool) -> float | None:
    if value is None:
        return None
    bound = "greater than 0" if positive else "0 or more"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
        or value > _RATE_LIMIT_MAX
    ):
        raise _invalid(field, f"a number {bound}, or null", _show(value))
    return float(value)


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 80 else text[:77] + "..."


def _fields(body: object, allowed: frozenset[str]) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise InvalidRequest(
            "The request body must be a JSON object: {provider_slug, secret, alias, "
            "default_config, rate_limit?, rate_limit_period?}.",
            code="invalid_body",
        )
    if "secret_id" in body and "secret_id" not in allowed:
        raise InvalidRequest(
            "secret_id references a secret in Cloudflare's Secrets Store, which tollgate does "
            "not have: send the provider key itself as secret (it is stored encrypted).",
            code="invalid_field",
            param="secret_id",
        )
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field {unknown[0]!r}: a provider config has {', '.join(CREATE_FIELDS)}",
            code="unknown_field",
            param=unknown[0],
        )
    return body


def parse_create(body: object) -> tuple[str, dict[str, Any]]:
    """A create body -> (the key, the other fields as stored)."""
    fields = _fields(body, frozenset(CREATE_FIELDS))
    for required in ("provider_slug", "secret"):
        if required not in fields:
            raise InvalidRequest(
                f"{required} is required: a provider config stores one provider key "
                "({provider_slug, secret, alias, default_config}).",
                code="missing_field",
                param=required,
            )
    values: dict[str, Any] = {
        "provider_slug": _provider_slug(fields["provider_slug"]),
        "alias": _alias(fields.get("alias", DEFAULT_ALIAS)),
        "default_config": _boolean(fields.get("default_config", False), "default_config"),
        "rate_limit": _number(fields.get("rate_limit"), "rate_limit", positive=False),
        "rate_limit_period": _number(
            fields.get("rate_limit_period", DEFAULT_RATE_LIMIT_PERIOD),
            "rate_limit_period",
            positive=True,
        ),
    }
    return _secret(fields["secret"]), values


def parse_update(body: object, current: ProviderConfigRecord) -> tuple[str | None, dict[str, Any]]:
    """A PUT body -> (the new key if sent, the changed fields). Fields not sent stay."""
    fields = _fields(body, frozenset(CREATE_FIELDS) | READ_ONLY_FIELDS)
    if "provider_slug" in fields and fields["provider_slug"] != current.provider_slug:
        raise InvalidRequest(
            f"provider_slug cannot be changed (this config stores a {current.provider_slug} "
            "key); store the other provider's key as a new config.",
            code="invalid_field",
            param="provider_slug",
        )
    changes: dict[str, Any] = {}
    if "alias" in fields:
        changes["alias"] = _alias(fields["alias"])
    if "default_config" in fields:
        changes["default_config"] = _boolean(fields["default_config"], "default_config")
    if "rate_limit" in fields:
        changes["rate_limit"] = _number(fields["rate_limit"], "rate_limit", positive=False)
    if "rate_limit_period" in fields:
        changes["rate_limit_period"] = _number(
            fields["rate_limit_period"], "rate_limit_period", positive=True
        )
    secret = _secret(fields["secret"]) if "secret" in fields else None
    return secret, changes


# --- handlers ---------------------------------------------------------------------------------


class ProviderConfigRoutes:
    """The handlers; `provider_configs_router` mounts them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._gateways = GatewayRoutes(services)  # one implementation of the auth order

    async def _authorize(self, request: Request, account_id: str, permission: str) -> None:
        await self._gateways._authorize(request, account_id, permission)

    async def _json_body(self, request: Request) -> object:
        limit = self.services.settings.server.max_body_bytes
        return await read_json_body(request, limit, "the provider config's fields")

    async def _gateway_exists(self, account_id: str, gateway_id: str) -> None:
        # 404 for a missing gateway; `default` exists once asked for, as on the data plane.
        await self.services.gateways.resolve(account_id, gateway_id)

    async def _sealed(
        self, account_id: str, gateway_id: str, config_id: str, secret: str
    ) -> dict[str, str]:
        box = self.services.stored_keys.box
        return {
            "ciphertext": box.seal(secret, account_id, gateway_id, config_id),
            "key_id": box.key_id,
            "secret_id": new_id(),
            "secret_preview": secret_preview(secret),
        }

    async def list_configs(self, request: Request, account_id: str, gateway_id: str) -> Response:
        await self._authorize(request, account_id, "read")
        paging = page_request(request.query_params)
        await self._gateway_exists(account_id, gateway_id)
        found = await config_repo.list_provider_configs(
            self.services.store,
            account_id,
            gateway_id,
            offset=paging.offset,
            limit=paging.per_page,
        )
        return cloudflare_response(
            [provider_config_object(r) for r in found.items],
            result_info=paging.result_info(len(found.items), found.total),
        )

    async def create_config(self, request: Request, account_id: str, gateway_id: str) -> Response:
        await self._authorize(request, account_id, "edit")
        secret, values = parse_create(await self._json_body(request))
        await self._gateway_exists(account_id, gateway_id)
        config_id = new_id()
        sealed = await self._sealed(account_id, gateway_id, config_id, secret)
        try:
            record = await config_repo.insert_provider_config(
                self.services.store, account_id, gateway_id, config_id, {**values, **sealed}
            )
        except AliasTaken:
            raise _alias_taken(gateway_id, values["provider_slug"], values["alias"]) from None
        self.services.stored_keys.invalidate(account_id, gateway_id)
        return cloudflare_response(provider_config_object(record))

    async def get_config(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "read")
        return cloudflare_response(
            provider_config_object(await self._existing(account_id, gateway_id, id))
        )

    async def update_config(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "edit")
        body = await self._json_body(request)
        current = await self._existing(account_id, gateway_id, id)
        secret, changes = parse_update(body, current)
        if secret is not None:
            changes.update(await self._sealed(account_id, gateway_id, id, secret))
        try:
            record = await config_repo.update_provider_config(
                self.services.store, account_id, gateway_id, id, changes
            )
        except AliasTaken:
            raise _alias_taken(gateway_id, current.provider_slug, changes["alias"]) from None
        if record is None:
            raise _not_found(gateway_id, id)
        self.services.stored_keys.invalidate(account_id, gateway_id)
        return cloudflare_response(provider_config_object(record))

    async def delete_config(
        self, request: Request, account_id: str, gateway_id: str, id: str
    ) -> Response:
        await self._authorize(request, account_id, "edit")
        record = await config_repo.delete_provider_config(
            self.services.store, account_id, gateway_id, id
        )
        if record is None:
            raise _not_found(gateway_id, id)
        self.services.stored_keys.invalidate(account_id, gateway_id)
        return cloudflare_response(provider_config_object(record))

    async def _existing(
        self, account_id: str, gateway_id: str, config_id: str
    ) -> ProviderConfigRecord:
        record = await config_repo.get_provider_config(
            self.services.store, account_id, gateway_id, config_id
        )
        if record is None:
            raise _not_found(gateway_id, config_id)
        return record


def _alias_taken(gateway_id: str, provider: str, alias: str) -> Conflict:
    return Conflict(
        f"Gateway {gateway_id} already stores a {provider} key under the alias '{alias}'. "
        "Rotate it with PUT .../provider_configs/{id}, or choose another alias.",
        code="already_exists",
        param="alias",
    )


def _not_found(gateway_id: str, config_id: str) -> NotFound:
    shown = config_id if len(config_id) <= 64 else config_id[:61] + "..."
    return NotFound(
        f"Provider config '{shown}' does not exist on gateway {gateway_id}. List them with "
        f"GET .../ai-gateway/gateways/{gateway_id}/provider_configs.",
        code="provider_config_not_found",
    )


def provider_configs_router(services: Services) -> APIRouter:
    """The stored keys routes; mount under `/client/v4`."""
    routes = ProviderConfigRoutes(services)
    prefix = "/accounts/{account_id}/ai-gateway/gateways/{gateway_id}/provider_configs"
    router = APIRouter(prefix=prefix, tags=["ai-gateway"])
    add = router.add_api_route
    add("", routes.list_configs, methods=["GET"], summary="List stored provider keys")
    add(
        "",
        routes.create_config,
        methods=["POST"],
        summary="Store a provider key",
        openapi_extra=json_body(CREATE_FIELDS, "provider_slug", "secret"),
        responses=error_responses(409),
    )
    add("/{id}", routes.get_config, methods=["GET"], summary="Fetch a stored provider key")
    add(
        "/{id}",
        routes.update_config,
        methods=["PUT"],
        summary="Rotate a stored provider key or change its fields",
        openapi_extra=json_body(CREATE_FIELDS),
        responses=error_responses(409),
    )
    add("/{id}", routes.delete_config, methods=["DELETE"], summary="Delete a stored provider key")
    return router
