"""The exceptions the SDK raises for a gateway's error answers, mapped from its error bodies.

    TollgateError                 any error answer (status, code, message)
    ├── InvalidRequest       400  invalid_request, invalid_header, invalid_json, ... (also 413, 422)
    ├── AuthenticationError  401  missing_token, invalid_token, expired_token, revoked_token
    ├── InsufficientCredits  402  insufficient_credits
    ├── PermissionDenied     403  missing_permission, wrong_account, account_disabled
    ├── NotFound             404  log_not_found, gateway_not_found, provider_not_found, ...
    ├── RateLimited          429  rate_limited (and a provider's own 429); `retry_after`
    │   └── SpendLimitExceeded    429 spend_limit_exceeded; `retry_after` until the window moves
    └── UpstreamError        5xx  upstream_error, upstream_unreachable, upstream_timeout, ...

`SpendLimitExceeded` is a `RateLimited`, as in the gateway's own tree: both are 429s that say
when to come back. Catch `SpendLimitExceeded` first to tell them apart.

The gateway renders an error in the format of the surface called (PRODUCT.md §6), and relays a
provider's own error unchanged on native endpoints, so `error_from_response` reads them all:
OpenAI `{"error": {"message", "type", "code", "param"}}`, Anthropic `{"type": "error", "error":
{"type", "message"}}`, Google `{"error": {"code", "message", "status", "details"}}`, the
Cloudflare v4 envelope `{"success": false, "errors": [{"code", "message", "error_code"}]}`, and
plain text. `code` is the gateway's stable string code when it sent one, else the provider's
error type (e.g. `server_error`), else `http_{status}`.

Network failures are not mapped: they raise httpx's own `httpx.TransportError` subclasses
(`httpx.TimeoutException` when the client's `timeout` passes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "AuthenticationError",
    "InsufficientCredits",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "SpendLimitExceeded",
    "TollgateError",
    "UpstreamError",
]


class TollgateError(Exception):
    """An error answer from the gateway (or from a provider, relayed by it).

    Attributes: `status` (the HTTP status), `code` (a stable string such as
    `insufficient_credits`), `message` (the gateway's own message, which says what to do next),
    `param` (the field or header at fault, when named), `log_id` (the answer's `cf-aig-log-id`),
    `body` (the parsed error body, or its text) and `headers` (the answer's headers).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        param: str | None = None,
        log_id: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.log_id = log_id
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class InvalidRequest(TollgateError):
    """400 (also 413 and 422): the request is malformed; `param` names what is wrong."""


class AuthenticationError(TollgateError):
    """401: the token is missing, unknown, expired or revoked."""


class InsufficientCredits(TollgateError):
    """402 `insufficient_credits`: the account's credits cannot cover the request; the message
    says how much it needed and how much is available."""


class PermissionDenied(TollgateError):
    """403: the token lacks the permission, or belongs to another account."""


class NotFound(TollgateError):
    """404: no such log, gateway, provider or route."""


class RateLimited(TollgateError):
    """429: a rate limit refused the request. `retry_after` is the seconds to wait (from the
    `Retry-After` header), or None when the answer did not say."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class SpendLimitExceeded(RateLimited):
    """429 `spend_limit_exceeded`: an account or gateway spending limit would be passed;
    `retry_after` is the seconds until the window moves (or raise the limit)."""


class UpstreamError(TollgateError):
    """5xx: the provider failed, timed out or could not be reached (or the gateway failed)."""


_BY_STATUS: dict[int, type[TollgateError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    402: InsufficientCredits,
    403: PermissionDenied,
    404: NotFound,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}
# In-band stream errors carry no status: their `type` says which one it would have been.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "insufficient_quota": 402,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "timeout_error": 504,
}


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> TollgateError:
    """The exception for an error answer (status >= 400), from its status, headers and body."""
    text = content.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text) if text.strip() else None
    except ValueError:
        body = text
    message, code, param = _describe(body)
    if not message:
        message = text.strip()[:500] or f"The gateway answered HTTP {status} with no body."
    return build_error(
        status,
        code or f"http_{status}",
        message,
        param=param,
        body=body,
        headers=headers,
    )


def error_from_event(payload: Any) -> TollgateError:
    """The exception for an error event inside a stream (OpenAI, Anthropic or Google shape)."""
    message, code, param = _describe(payload)
    error = payload.get("error") if isinstance(payload, dict) else None
    status = 502
    if isinstance(error, dict):
        if isinstance(error.get("code"), int) and not isinstance(error.get("code"), bool):
            status = int(error["code"])  # Google's numeric status
        elif isinstance(error.get("type"), str):
            status = _STATUS_BY_TYPE.get(error["type"], 502)
    return build_error(
        status,
        code or "stream_error",
        message or "The stream ended with an error event.",
        param=param,
        body=payload,
        headers={},
    )


def build_error(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None,
    body: Any,
    headers: Mapping[str, str],
) -> TollgateError:
    """The exception class for `status` and `code`, filled in."""
    lowered = {name.lower(): value for name, value in headers.items()}
    fields: dict[str, Any] = {
        "status": status,
        "code": code,
        "param": param,
        "log_id": lowered.get("cf-aig-log-id"),
        "body": body,
        "headers": lowered,
    }
    if status == 429:
        retry_after = _retry_after(lowered.get("retry-after"))
        cls = SpendLimitExceeded if code == "spend_limit_exceeded" else RateLimited
        return cls(message, retry_after=retry_after, **fields)
    if status >= 500:
        return UpstreamError(message, **fields)
    return _BY_STATUS.get(status, TollgateError)(message, **fields)


def _describe(body: Any) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from any of the error shapes in the module docstring."""
    if not isinstance(body, dict):
        return None, None, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # Cloudflare v4
        first = errors[0]
        code = first.get("error_code") or first.get("code")
        return _text(first.get("message")), _text(code), None
    error = body.get("error")
    if isinstance(error, list) and error and isinstance(error[0], dict):  # AiGatewayError
        return _text(error[0].get("message")), _text(error[0].get("code")), None
    if isinstance(error, dict):
        message = _text(error.get("message"))
        if isinstance(error.get("status"), str):  # Google: the gateway's code is the reason
            details = error.get("details")
            reason = None
            if isinstance(details, list) and details and isinstance(details[0], dict):
                reason = details[0].get("reason")
            return message, _text(reason) or error["status"], None
        code = error.get("code") if isinstance(error.get("code"), str) else None
        return message, code or _text(error.get("type")), _text(error.get("param"))
    if isinstance(error, str):
        return error, None, None
    return _text(body.get("message")), None, None


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date (seconds from now)."""
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
