"""The Universal endpoint: `POST /v1/{account_id}/{gateway_id}` with one step or an array of steps,
tried in order until one answers (fallbacks, reference §1.5).

    step = {"provider": "openai", "endpoint": "chat/completions", "query": {...the body...},
            "headers": {"authorization": "...", "cf-aig-max-attempts": "2", ...},
            "config": {"requestTimeout": ms, "maxAttempts": 1-5, "retryDelay": ms,
                       "backoff": "constant|linear|exponential"}}

Every step is validated before the first one is sent: a malformed step (or bad retry values in any
step) is a 400 naming the step and the field, and nothing reaches an upstream or the ledger.

Each step then runs through the provider-native pipeline (`pipeline.proxy_native`), exactly as if
the client had called `/v1/{account}/{gateway}/{provider}/{endpoint}` with the step's headers: its
own authentication, credentials, admission (hold), retries and relay. Headers: step `config` >
step `headers` > the HTTP request's headers > the gateway's settings.

A step fails, and the next one is tried, when the provider's final answer (after the step's
retries) has an error status, or when it sends nothing within the request timeout, or cannot be
reached. A failed step's answer is never relayed and its hold is released (it is never billed).
The last step's answer is relayed whatever it is. A refusal by tollgate itself (authentication,
validation, credits, spend limits) ends the request with that error: it is about the request, not
the provider, and is returned at once. Every response names the step that produced it in
`cf-aig-step` (0-based); the request's context gets the same in `ctx.step`.

Not supported as a step (yet): `provider: "compat"` (use the provider's native endpoint).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Message, Receive, Send

from tollgate.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollgate.features.retry import (
    BACKOFF_HEADER,
    BACKOFFS,
    MAX_ATTEMPTS,
    MAX_ATTEMPTS_HEADER,
    MAX_REQUEST_TIMEOUT_MS,
    MAX_RETRY_DELAY_MS,
    REQUEST_TIMEOUT_HEADER,
    RETRY_DELAY_HEADER,
    FallbackNeeded,
    read_retry_headers,
)
from tollgate.ids import CUSTOM_PROVIDER
from tollgate.pipeline import NativeRequest, proxy_native
from tollgate.providers.registry import PROVIDERS
from tollgate.services import Services
from tollgate.upstream import Upstream

# Each step may retry up to 5 times; more than this many fallbacks is a configuration mistake.
MAX_STEPS = 10
STEP_HEADER = b"cf-aig-step"
_STEP_FIELDS = frozenset({"provider", "endpoint", "query", "headers", "config", "authorization"})
# `config` key -> (the header it stands for, lowest, highest); `backoff` is checked apart.
_CONFIG_INTEGERS = {
    "requestTimeout": (REQUEST_TIMEOUT_HEADER, 1, MAX_REQUEST_TIMEOUT_MS),
    "maxAttempts": (MAX_ATTEMPTS_HEADER, 1, MAX_ATTEMPTS),
    "retryDelay": (RETRY_DELAY_HEADER, 0, MAX_RETRY_DELAY_MS),
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Step:
    provider: str
    path: str  # after the provider slug, no leading slash
    query: bytes  # the endpoint's own query string, if it had one
    headers: list[tuple[bytes, bytes]]  # the request's, overridden by the step's
    body: bytes


async def proxy_universal(
    services: Services,
    upstream: Upstream,
    request: NativeRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Try each step in order; the first that does not fail answers the client.
    `request` is the Universal request itself: its path is empty and its body the steps."""
    if request.method != "POST":
        raise MethodNotAllowed(
            f"The Universal endpoint takes POST only, not {request.method}.",
            headers={"allow": "POST"},
        )
    steps = parse_steps(request.body, request.headers)
    tracked = _TrackedSend(send)
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        request.ctx.step = index
        request.ctx.path = step.path  # the log shows the provider path that answered
        step_request = NativeRequest(
            account_id=request.account_id,
            gateway_id=request.gateway_id,
            provider=step.provider,
            path=step.path,
            method="POST",
            query=step.query,
            headers=step.headers,
            body=step.body,
            ctx=request.ctx,
            fallback=not last,
        )
        step_headers = [*extra_headers, (STEP_HEADER, str(index).encode())]
        try:
            await proxy_native(services, upstream, step_request, receive, tracked, step_headers)
            return
        except FallbackNeeded:
            continue  # the answer was dropped unrelayed and its hold released
        except (UpstreamTimeout, UpstreamUnavailable) as error:
            if last or tracked.started:
                raise _at_step(error, index) from None
            continue  # nothing was sent to the client; the hold is already released
        except GatewayError as error:
            raise _at_step(error, index) from None


def _at_step(error: GatewayError, index: int) -> GatewayError:
    error.headers.setdefault(STEP_HEADER.decode(), str(index))
    return error


class _TrackedSend:
    """Knows whether a response was started: after that, no other step may answer."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


# --- parsing and validating the steps ------------------------------------------------------------


def parse_steps(body: bytes, request_headers: list[tuple[bytes, bytes]]) -> list[Step]:
    """The body as steps, every one validated, or a 400 saying which step and field is wrong."""
    read_retry_headers(request_headers)  # the request's own values, named as headers
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The Universal request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    raw_steps = [parsed] if isinstance(parsed, dict) else parsed
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidRequest(
            "The Universal request body must be a step object or a non-empty array of steps: "
            '{"provider", "endpoint", "query", "headers"?, "config"?}.',
            code="invalid_steps",
        )
    if len(raw_steps) > MAX_STEPS:
        raise InvalidRequest(
            f"A Universal request takes at most {MAX_STEPS} steps, got {len(raw_steps)}.",
            code="invalid_steps",
        )
    base = [(k, v) for k, v in request_headers if k not in (b"content-type", b"content-length")]
    return [_parse_step(index, raw, base) for index, raw in enumerate(raw_steps)]


def _parse_step(index: int, raw: object, base: list[tuple[bytes, bytes]]) -> Step:
    where = f"step[{index}]"
    if not isinstance(raw, dict):
        raise _bad_step(where, "must be an object", where)
    unknown = sorted(set(raw) - _STEP_FIELDS)
    if unknown:
        raise _bad_step(where, f"has unknown field '{unknown[0]}'", f"{where}.{unknown[0]}")
    provider = _required_string(raw, "provider", where)
    if provider not in PROVIDERS and not CUSTOM_PROVIDER.fullmatch(provider):
        hint = " ('compat' is not supported as a step yet)" if provider == "compat" else ""
        raise _bad_step(
            where,
            f"has unknown provider '{provider}'{hint}. Known providers: {', '.join(PROVIDERS)}, "
            "custom-{slug}",
            f"{where}.provider",
        )
    path, _, query = _required_string(raw, "endpoint", where).lstrip("/").partition("?")
    if not path or any(s in (".", "..") for s in path.split("/")) or "\\" in path:
        raise _bad_step(
            where,
            "has an invalid endpoint: a provider path such as 'chat/completions', without "
            "'.', '..' or backslashes",
            f"{where}.endpoint",
        )
    payload = raw.get("query")
    if not isinstance(payload, dict):
        raise _bad_step(
            where, "needs 'query': the provider's request body, a JSON object", f"{where}.query"
        )
    own = dict(_step_headers(raw, where))
    own.update(_config_headers(raw.get("config"), where))  # config wins over the step's headers
    own.setdefault(*_JSON_CONTENT_TYPE)
    headers = [(k, v) for k, v in base if k not in own] + list(own.items())
    try:
        read_retry_headers(headers)
    except InvalidRequest as error:
        raise InvalidRequest(
            f"Universal {where}: {error.message}", code=error.code, param=f"{where}.headers"
        ) from None
    return Step(provider, path, query.encode(), headers, orjson.dumps(payload))


def _required_string(raw: dict[str, Any], field: str, where: str) -> str:
    value = raw.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _bad_step(where, f"needs '{field}', a non-empty string", f"{where}.{field}")
    return value.strip()


def _step_headers(raw: dict[str, Any], where: str) -> list[tuple[bytes, bytes]]:
    """The step's headers, lowercased; numbers and booleans are sent as text (as Cloudflare's
    binding does). The older top-level `authorization` field is the Authorization header."""
    given = raw.get("headers", {})
    if not isinstance(given, dict):
        raise _bad_step(where, "has 'headers' that is not an object", f"{where}.headers")
    if "authorization" in raw:
        given = {"authorization": _required_string(raw, "authorization", where), **given}
    headers: dict[bytes, bytes] = {}
    for name, value in given.items():
        param = f"{where}.headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise _bad_step(where, f"has an invalid header name '{name}'", param)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise _bad_step(where, f"has header '{name}' whose value is not text", param)
        if "\r" in text or "\n" in text:
            raise _bad_step(where, f"has header '{name}' with a line break in its value", param)
        headers[name.lower().encode("latin-1")] = text.encode("latin-1", errors="replace")
    return list(headers.items())


def _config_headers(config: object, where: str) -> list[tuple[bytes, bytes]]:
    """`config` as the `cf-aig-*` headers it stands for (it wins over the step's headers)."""
    if config is None:
        return []
    if not isinstance(config, dict):
        raise _bad_step(where, "has 'config' that is not an object", f"{where}.config")
    headers: list[tuple[bytes, bytes]] = []
    for key, value in config.items():
        param = f"{where}.config.{key}"
        if key == "backoff":
            if value not in BACKOFFS:
                raise _bad_step(
                    where, "config.backoff must be one of " + ", ".join(BACKOFFS), param
                )
            headers.append((BACKOFF_HEADER, value.encode()))
            continue
        if key not in _CONFIG_INTEGERS:
            known = ", ".join([*_CONFIG_INTEGERS, "backoff"])
            raise _bad_step(where, f"has unknown config '{key}' (known: {known})", param)
        name, low, high = _CONFIG_INTEGERS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad_step(where, f"config.{key} must be an integer from {low} to {high}", param)
        headers.append((name, str(value).encode()))
    return headers


def _bad_step(where: str, problem: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"Universal {where} {problem}.", code="invalid_step", param=param)
