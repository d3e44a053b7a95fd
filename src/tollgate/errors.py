"""The errors tollgate raises, each knowing its HTTP status and a stable string code.

Errors are raised anywhere and rendered only at the edge (`tollgate.api.render`), in the format of
the surface the client called: OpenAI, Anthropic, Google or the Cloudflare v4 envelope.

    GatewayError                      (500 internal_error)
    ├── InvalidRequest       400  invalid_request, invalid_json, invalid_content_type, ...
    ├── AuthenticationFailed 401  missing_token, invalid_token, expired_token, revoked_token
    ├── InsufficientCredits  402  insufficient_credits
    ├── PermissionDenied     403  missing_permission, wrong_account, account_disabled
    ├── NotFound             404  account_not_found, gateway_not_found, route_not_found, ...
    ├── MethodNotAllowed     405  method_not_allowed
    ├── Conflict             409  already_exists
    ├── PayloadTooLarge      413  request_too_large
    ├── RateLimited          429  rate_limited (carries retry_after seconds)
    ├── UpstreamUnavailable  502  upstream_unreachable, upstream_error
    ├── ServiceUnavailable   503  service_unavailable
    └── UpstreamTimeout      504  upstream_timeout

The message always says what to do next; the code never changes once published.
"""

from __future__ import annotations

from datetime import datetime


class GatewayError(Exception):
    status: int = 500
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class InvalidRequest(GatewayError):
    status = 400
    default_code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    default_code = "invalid_token"


class InsufficientCredits(GatewayError):
    status = 402
    default_code = "insufficient_credits"


class PermissionDenied(GatewayError):
    status = 403
    default_code = "missing_permission"


class NotFound(GatewayError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    default_code = "already_exists"


class PayloadTooLarge(GatewayError):
    status = 413
    default_code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    default_code = "rate_limited"


class UpstreamUnavailable(GatewayError):
    status = 502
    default_code = "upstream_unreachable"


class ServiceUnavailable(GatewayError):
    status = 503
    default_code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    default_code = "upstream_timeout"


class InsufficientBalance(InsufficientCredits):
    """402 insufficient_credits, carrying the amount a hold needed and what was available."""

    def __init__(
        self,
        message: str,
        *,
        needed_nanos: int,
        available_nanos: int,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, headers=headers)
        self.needed_nanos = needed_nanos
        self.available_nanos = available_nanos


class SpendLimitExceeded(RateLimited):
    """429 spend_limit_exceeded: an account or gateway spending limit would be passed.

    `retry_after` is whole seconds until the request could fit (also sent as `Retry-After`),
    `reset_at` the UTC instant, `limits` the labels of every limit that refused.
    """

    default_code = "spend_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        reset_at: datetime,
        limits: tuple[str, ...] = (),
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            param=param,
            headers={"Retry-After": str(retry_after), **(headers or {})},
        )
        self.retry_after = retry_after
        self.reset_at = reset_at
        self.limits = limits
