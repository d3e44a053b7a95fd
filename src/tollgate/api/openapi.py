"""What `/openapi.json` says each operation answers: every status, and the body that comes with it.

FastAPI documents only what it sees: a 200 with an empty schema (the handlers return a
`Response` they build themselves) and a 422 for its own validation errors, which tollgate never
sends (app.py renders them as 400). `complete_document` fixes both on the generated document,
once, for every route:

- the 422 and its schemas go;
- every error status an operation can answer is listed, with the body its surface renders
  (`tollgate.api.render`): the Cloudflare v4 error envelope under `/client/v4` and for the
  Stripe webhook, `{"error": {...}}` under `/admin/v1`. The statuses every route of a surface
  shares are `SURFACE_ERRORS` below (plus 413 wherever a body is read); a route adds its own
  with `responses=error_responses(...)`;
- a `/client/v4` success that FastAPI left undescribed is the v4 success envelope. A route whose
  body is something else (the logs' raw bodies) declares its content itself, and is left alone.

The fuzz suite (`tests/fuzz`) checks the running gateway against this document.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

CLIENT_PREFIX = "/client/v4/"
ADMIN_PREFIX = "/admin/v1/"

_CLOUDFLARE_ERROR = "CloudflareError"
_CLOUDFLARE_SUCCESS = "CloudflareSuccess"
_ADMIN_ERROR = "AdminError"

SCHEMAS: dict[str, dict[str, Any]] = {
    _CLOUDFLARE_ERROR: {
        "type": "object",
        "required": ["success", "errors", "messages", "result"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["code", "message", "error_code"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"},
                        "error_code": {"type": "string"},
                    },
                },
            },
            "messages": {"type": "array"},
            "result": {"type": "null"},
        },
    },
    _CLOUDFLARE_SUCCESS: {
        "type": "object",
        "required": ["success", "errors", "messages", "result"],
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "errors": {"type": "array", "maxItems": 0},
            "messages": {"type": "array"},
            "result": {},
            "result_info": {
                "type": "object",
                "required": ["page", "per_page", "count", "total_count", "total_pages"],
                "properties": {
                    name: {"type": "integer", "minimum": 0}
                    for name in ("page", "per_page", "count", "total_count", "total_pages")
                },
            },
        },
    },
    _ADMIN_ERROR: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "param"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
}

_REASONS = {
    400: "Bad input: a parameter or the body is invalid",
    401: "No valid token",
    402: "Payment failed",
    403: "The token may not do this (another account, a missing permission, a disabled account)",
    404: "No such account or resource",
    409: "It already exists",
    413: "The body is too large",
    429: "Too many requests",
    502: "The payment provider failed",
    503: "Not available now",
}

# Every route of a surface authenticates first and checks its parameters; `/client/v4` also
# answers 404 for a malformed account id and 403 for another account's token. Any route may find
# its database unreachable (a 503, `app._database_error`).
SURFACE_ERRORS = {
    CLIENT_PREFIX: (400, 401, 403, 404, 503),
    ADMIN_PREFIX: (400, 401, 404, 503),
    "/stripe/": (400,),
}


def _error_schema(path: str) -> str:
    return _ADMIN_ERROR if path.startswith(ADMIN_PREFIX) else _CLOUDFLARE_ERROR


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's own error statuses, for `responses=`: `complete_document` fills in the body of
    its surface (the route does not know under which prefix it is mounted)."""
    return {status: {"description": _REASONS.get(status, "Error")} for status in statuses}


def json_body(fields: Iterable[str], *required: str) -> dict[str, Any]:
    """A route's `openapi_extra` for a JSON object body with these fields. The fields are listed
    without types: the handler checks each one and explains a wrong one as a 400."""
    properties: dict[str, Any] = {name: {} for name in fields}
    schema = {"type": "object", "required": list(required), "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _is_undescribed(response: dict[str, Any]) -> bool:
    """FastAPI's placeholder: JSON with an empty schema, nothing else."""
    return response.get("content") == {"application/json": {"schema": {}}}


def _complete_operation(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    surface = next((s for prefix, s in SURFACE_ERRORS.items() if path.startswith(prefix)), ())
    statuses = {*surface, *(413,) * ("requestBody" in operation)}
    statuses.update(int(code) for code in responses if code.startswith(("4", "5")))
    error_content = {"application/json": {"schema": _ref(_error_schema(path))}}
    for status in sorted(statuses):
        entry = responses.setdefault(str(status), {})
        entry.setdefault("description", _REASONS.get(status, "Error"))
        entry["content"] = copy.deepcopy(error_content)
    if path.startswith(CLIENT_PREFIX):
        for code, entry in responses.items():
            if code.startswith("2") and _is_undescribed(entry):
                entry["content"] = {"application/json": {"schema": _ref(_CLOUDFLARE_SUCCESS)}}


def complete_document(document: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's generated document in place (see the module's docstring)."""
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            _complete_operation(path, operation)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(copy.deepcopy(SCHEMAS))
    return document


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json`) serve the completed document."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
