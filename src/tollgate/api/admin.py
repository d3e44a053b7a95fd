"""The operator admin API under /admin/v1: accounts, their API tokens, credits and ledger.

Every route needs the operator token (`Authorization: Bearer <token>`), checked before the body
is even parsed, so a caller without it learns nothing but 401. Bodies are plain JSON, not the
Cloudflare envelope; errors are `{"error": {"code", "message", "param"}}` (rendered by app.py).

Bad input is refused with 400 before anything is written. Amounts are strict JSON integers of
cents: a float, a string or a boolean is refused, never coerced. Money goes out as exact dollar
strings (`"10.00"`, `"0.000123"`) next to the exact integer of nano-dollars.

The JSON shapes are built by `account_json`, `token_json` and `entry_json`, which the CLI reuses
for its `--json` output, so both surfaces print the same objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.exceptions import HTTPException

from tollgate import money, operator
from tollgate.api.auth import PERMISSIONS, bearer_value
from tollgate.api.openapi import error_responses
from tollgate.errors import InvalidRequest
from tollgate.services import Services
from tollgate.store import Account, ApiToken, LedgerEntry, Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import tokens as token_repo

# One grant is capped at $100M: far above any real grant, far below the BIGINT nano-dollar limit.
MAX_GRANT_CENTS = 10_000_000_000
PERMISSION_ORDER = ("run", "read", "edit")
# Query bounds that keep the database's integers in range (a larger one was a 500): a page as
# the v4 API's (`tollgate.api.envelope`), a ledger seq as the BIGINT column.
MAX_PAGE = 10**9
MAX_SEQ = 2**63 - 1

# --- JSON shapes (shared with the CLI) ----------------------------------------------------------


def dollars(nanos: int) -> str:
    """Exact dollars with at least two decimals: `10.00`, `0.000123`, `-1.50`."""
    whole, _, fraction = f"{money.to_dollars(nanos):.9f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def timestamp(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "status": account.status,
        "balance": dollars(account.balance_nanos),
        "balance_nanos": account.balance_nanos,
        "held": dollars(account.held_nanos),
        "held_nanos": account.held_nanos,
        "created_at": timestamp(account.created_at),
        "modified_at": timestamp(account.modified_at),
    }


def token_status(token: ApiToken, now: datetime | None = None) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (now or datetime.now(UTC)):
        return "expired"
    return "active"


def token_json(token: ApiToken, secret: str | None = None) -> dict[str, Any]:
    """A token without its hash; `secret` is given only in the response that creates it."""
    body: dict[str, Any] = {"id": token.id}
    if secret is not None:
        body["token"] = secret
    body.update(
        account_id=token.account_id,
        name=token.name,
        permissions=[p for p in PERMISSION_ORDER if p in token.permissions],
        status=token_status(token),
        expires_at=timestamp(token.expires_at),
        revoked_at=timestamp(token.revoked_at),
        last_used_at=timestamp(token.last_used_at),
        created_at=timestamp(token.created_at),
    )
    return body


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "seq": entry.seq,
        "account_id": entry.account_id,
        "kind": entry.kind,
        "amount": dollars(entry.amount_nanos),
        "amount_nanos": entry.amount_nanos,
        "balance_after": dollars(entry.balance_after_nanos),
        "balance_after_nanos": entry.balance_after_nanos,
        "note": entry.note,
        "reference": entry.reference,
        "created_at": timestamp(entry.created_at),
    }


# --- request bodies -----------------------------------------------------------------------------

_FORBID = ConfigDict(extra="forbid")
Name = Annotated[
    str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=200)
]


class CreateAccount(BaseModel):
    model_config = _FORBID
    name: Name


class CreateToken(BaseModel):
    model_config = _FORBID
    name: Name
    permissions: list[Annotated[str, StringConstraints(strict=True)]] = Field(
        min_length=1, max_length=16
    )
    expires_at: datetime | None = None

    @field_validator("permissions")
    @classmethod
    def _known_permissions(cls, permissions: list[str]) -> list[str]:
        unknown = sorted(set(permissions) - PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission {unknown[0]!r}; use run, read and/or edit")
        return permissions

    @field_validator("expires_at", mode="before")
    @classmethod
    def _iso_string(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError("expected an ISO 8601 date-time string such as 2030-01-31T00:00:00Z")
        return value

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        return future_expiry(value)


def future_expiry(value: datetime | None) -> datetime | None:
    """An expiry as aware UTC (a time without a zone is taken as UTC); past times are refused."""
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if aware <= datetime.now(UTC):
        raise ValueError(f"{timestamp(aware)} is in the past; give a future time or null")
    return aware


class GrantCredits(BaseModel):
    model_config = _FORBID
    amount_cents: int = Field(strict=True, gt=0, le=MAX_GRANT_CENTS)
    note: str = Field("", strict=True, max_length=500)
    reference: str | None = Field(None, strict=True, min_length=1, max_length=200)


# --- validation errors, explained -----------------------------------------------------------------


def explain_validation(exc: RequestValidationError) -> InvalidRequest:
    """Turn FastAPI's validation error into one clear 400 that names the field."""
    return explain_errors(exc.errors(), skip=1)


def explain_errors(
    errors: Sequence[Any], *, skip: int = 0, label: Callable[[str], str] = str
) -> InvalidRequest:
    """One clear 400 for the first of pydantic's errors.

    `skip` drops leading location parts (FastAPI prefixes "body", "query" or "path"); `label`
    renders a field name for the reader (the CLI shows `--amount-cents` for `amount_cents`).
    """
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ())]
    field = ".".join(loc[skip:]) or None
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "JSON decode error")
        return InvalidRequest(
            f"The request body is not valid JSON ({detail}). Send a JSON object.",
            code="invalid_json",
        )
    if field is None:
        return InvalidRequest(
            "The request body must be a JSON object, sent with Content-Type: application/json.",
            code="invalid_json",
        )
    if kind == "missing":
        return InvalidRequest(f"{label(field)} is required.", code="missing_field", param=field)
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"{label(field)} is not a known field; check its spelling.",
            code="unknown_field",
            param=field,
        )
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    shown = _shown(first.get("input"))
    return InvalidRequest(f"{label(field)}: {message}{shown}", code="invalid_field", param=field)


def _shown(value: object) -> str:
    """The offending value, JSON-spelled and kept short, for the error message."""
    if isinstance(value, bool):
        return f" (got {str(value).lower()})"
    if isinstance(value, int):
        return f" (got {value})" if value.bit_length() <= 64 else " (got a huge number)"
    if isinstance(value, float):
        return f" (got {value!r})"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return f" (got {orjson.dumps(text).decode()})"
    return ""


def _operator_route(services: Services) -> type[APIRoute]:
    class OperatorRoute(APIRoute):
        """Checks the operator token first, then explains any validation error as a 400."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                await services.operator.check(bearer_value(request.headers.get("authorization")))
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    raise explain_validation(exc) from None
                except HTTPException as exc:
                    if exc.status_code != 400:
                        raise
                    raise InvalidRequest(
                        f"The request body could not be read as JSON ({exc.detail}).",
                        code="invalid_json",
                    ) from None

            return guarded

    return OperatorRoute


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


# --- routes ---------------------------------------------------------------------------------------


def admin_router(services: Services) -> APIRouter:
    # HTTPBearer only documents the scheme in OpenAPI; OperatorRoute does the checking.
    router = APIRouter(
        route_class=_operator_route(services),
        dependencies=[Security(HTTPBearer(auto_error=False))],
        tags=["admin"],
    )
    _account_routes(router, services)
    _token_routes(router, services)
    _credit_routes(router, services)
    return router


def _account_routes(router: APIRouter, services: Services) -> None:
    store = services.store

    @router.post("/accounts", status_code=201, response_model=None)
    async def create_account(body: CreateAccount) -> Response:
        return _json(account_json(await account_repo.create_account(store, body.name)), 201)

    @router.get("/accounts", response_model=None)
    async def list_accounts(
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        found = await account_repo.list_accounts(
            store, offset=(page - 1) * per_page, limit=per_page
        )
        return _json(
            {
                "accounts": [account_json(a) for a in found.items],
                "page": page,
                "per_page": per_page,
                "total": found.total,
                "total_pages": math.ceil(found.total / per_page),
            }
        )

    @router.get("/accounts/{account_id}", response_model=None)
    async def get_account(account_id: str) -> Response:
        return _json(account_json(await operator.require_account(store, account_id)))

    async def set_status(account_id: str, status: str) -> Response:
        account = await operator.set_account_status(store, account_id, status)
        services.tokens.forget_account(account_id)
        return _json(account_json(account))

    @router.post("/accounts/{account_id}/disable", response_model=None)
    async def disable_account(account_id: str) -> Response:
        return await set_status(account_id, "disabled")

    @router.post("/accounts/{account_id}/enable", response_model=None)
    async def enable_account(account_id: str) -> Response:
        return await set_status(account_id, "active")


def _token_routes(router: APIRouter, services: Services) -> None:
    store = services.store

    @router.post("/accounts/{account_id}/tokens", status_code=201, response_model=None)
    async def create_token(account_id: str, body: CreateToken) -> Response:
        record, secret = await operator.issue_token(
            store,
            account_id,
            name=body.name,
            permissions=frozenset(body.permissions),
            expires_at=body.expires_at,
        )
        return _json(token_json(record, secret), 201)

    @router.get("/accounts/{account_id}/tokens", response_model=None)
    async def list_tokens(account_id: str) -> Response:
        await operator.require_account(store, account_id)
        tokens = await token_repo.list_tokens(store, account_id)
        return _json({"tokens": [token_json(t) for t in tokens]})

    async def revoke(account_id: str, token_id: str) -> Response:
        token = await operator.revoke_token(store, account_id, token_id)
        services.tokens.forget_token(token_id)
        return _json(token_json(token))

    @router.delete("/accounts/{account_id}/tokens/{token_id}", response_model=None)
    async def delete_token(account_id: str, token_id: str) -> Response:
        return await revoke(account_id, token_id)

    @router.post("/accounts/{account_id}/tokens/{token_id}/revoke", response_model=None)
    async def revoke_token(account_id: str, token_id: str) -> Response:
        return await revoke(account_id, token_id)


def _credit_routes(router: APIRouter, services: Services) -> None:
    store = services.store

    # 200: a grant whose `reference` was already used is not made again; its entry is returned.
    replayed: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "The earlier grant with this reference, not made again",
            "content": {"application/json": {"schema": {}}},
        }
    }

    @router.post(
        "/accounts/{account_id}/credits",
        status_code=201,
        response_model=None,
        responses={**replayed, **error_responses(409)},  # 409: the reference names another grant
    )
    async def grant_credits(account_id: str, body: GrantCredits) -> Response:
        entry, created = await operator.grant_credits(
            store,
            account_id,
            amount_cents=body.amount_cents,
            note=body.note,
            reference=body.reference,
        )
        return _json(entry_json(entry), 201 if created else 200)

    @router.get("/accounts/{account_id}/ledger", response_model=None)
    async def account_ledger(
        account_id: str,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
    ) -> Response:
        account = await operator.require_account(store, account_id)
        return _json(await ledger_page(store, account, limit=limit, before=before))


async def ledger_page(
    store: Store, account: Account, *, limit: int, before: int | None
) -> dict[str, Any]:
    """One page of the ledger, newest first; `next_before` fetches the following page."""
    entries = await ledger_repo.list_entries(store, account.id, limit=limit + 1, before_seq=before)
    more = len(entries) > limit
    return {
        "account_id": account.id,
        "balance": dollars(account.balance_nanos),
        "balance_nanos": account.balance_nanos,
        "entries": [entry_json(e) for e in entries[:limit]],
        "next_before": entries[limit - 1].seq if more else None,
    }
