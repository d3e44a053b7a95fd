"""Render errors in the format of the surface the client called (PRODUCT.md §6).

Rendering happens only here, at the edge. Every body carries the stable string code.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.errors import GatewayError

# OpenAI's error `type` by status, as the official SDKs expect it.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",  # the body did not arrive in time
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
}
# Cloudflare v4 envelopes carry numeric codes; these follow Cloudflare's where one is known.
_CLOUDFLARE_CODES = {400: 7001, 401: 10000, 403: 10000, 404: 7002, 409: 7004, 413: 7005, 429: 7006}


def openai_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": _OPENAI_TYPES.get(error.status, "api_error"),
            "code": error.code,
            "param": error.param,
        }
    }


def cloudflare_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [
            {
                "code": _CLOUDFLARE_CODES.get(error.status, 7000),
                "message": error.message,
                "error_code": error.code,
            }
        ],
        "messages": [],
        "result": None,
    }


def admin_error_body(error: GatewayError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "param": error.param}}


def error_headers(error: GatewayError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return headers


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "request_too_large",
    504: "timeout_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def anthropic_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": _ANTHROPIC_TYPES.get(error.status, "api_error"),
            "message": error.message,
            "code": error.code,
        },
    }


def google_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "code": error.status,
            "message": error.message,
            "status": _GOOGLE_STATUS.get(error.status, "INTERNAL"),
            "details": [{"reason": error.code}],
        }
    }


ERROR_RENDERERS = {
    "openai": openai_error_body,
    "anthropic": anthropic_error_body,
    "google": google_error_body,
}
