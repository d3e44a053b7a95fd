"""tollgate's Python SDK: Cloudflare's Workers AI binding (`env.AI`), in Python.

    from tollgate.sdk import AI

    with AI(account_id, token, "http://127.0.0.1:8787") as ai:
        reply = ai.run("openai/gpt-4o-mini", {"prompt": "Hello"}, gateway={"id": "default"})
        log = ai.gateway("default").get_log(ai.last_log_id)

`AI` is synchronous and `AsyncAI` its asyncio twin; `ai.gateway(id)` gives a `Gateway` (or
`AsyncGateway`); streamed answers are a `Stream` (or `AsyncStream`) of parsed chunks; error
answers raise a `TollgateError` subclass. See docs/sdk.md.
"""

from tollgate.sdk._options import GatewayOptions, RetryOptions, UniversalStep
from tollgate.sdk._streams import AsyncStream, Stream
from tollgate.sdk.aio import AsyncAI
from tollgate.sdk.client import AI
from tollgate.sdk.errors import (
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    SpendLimitExceeded,
    TollgateError,
    UpstreamError,
)
from tollgate.sdk.gateway import AsyncGateway, Gateway

__all__ = [
    "AI",
    "AsyncAI",
    "AsyncGateway",
    "AsyncStream",
    "AuthenticationError",
    "Gateway",
    "GatewayOptions",
    "InsufficientCredits",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryOptions",
    "SpendLimitExceeded",
    "Stream",
    "TollgateError",
    "UniversalStep",
    "UpstreamError",
]
