"""What the sync and async clients share: each call as a `Call` value, and what to make of the
answer. No I/O here; `client.AI` and `aio.AsyncAI` only send the calls (httpx's own advice:
one client, written once, over two transports).

The surfaces each call uses (docs/api.md):

    run                   POST /client/v4/accounts/{account}/ai/run          {"model", "input"}
    gateway(id).run       POST /v1/{account}/{gateway}                      the steps
    gateway(id).get_log   GET  /client/v4/accounts/{account}/ai-gateway/gateways/{id}/logs/{log}
    gateway(id).patch_log PATCH (the same)
    models                GET  /client/v4/accounts/{account}/ai/models/search

`/ai/run` takes chat inputs (`messages` or `prompt`) and embedding inputs (`input`, or Workers AI's
`text`) alike, and answers both in its `{"state", "result"}` envelope. On the REST surface the
token goes in `Authorization` and the gateway in `cf-aig-gateway-id`; on the data plane the token
goes in `cf-aig-authorization`, which leaves `Authorization` free for a Universal step's own
provider key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from tollgate import __version__
from tollgate.sdk._options import (
    check_account_id,
    check_metadata,
    gateway_headers,
    universal_steps,
)
from tollgate.sdk.errors import TollgateError, build_error, error_from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8787"
DEFAULT_TIMEOUT = 60.0
MODELS_PER_PAGE = 1000
USER_AGENT = f"tollgate-sdk-python/{__version__}"
Timeout = float | httpx.Timeout | None
_CHAT_KEYS = ("messages", "prompt")
_EMBEDDING_KEYS = ("input", "text")


class _Unset:
    """ "Not given", for patch_log's fields, where None means "clear it"."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to make, and whether its `cf-aig-log-id` is the client's last log id."""

    method: str
    path: str
    headers: dict[str, str | bytes] = field(default_factory=dict)
    json: Any = None
    params: dict[str, str | int] | None = None
    stream: bool = False
    logged: bool = False

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as bytes: text values in UTF-8 (httpx would take ASCII only)."""
        return [
            (name.encode(), value if isinstance(value, bytes) else value.encode())
            for name, value in self.headers.items()
        ]


class ClientCore:
    """The state and call-building of `AI` and `AsyncAI`."""

    def __init__(self, account_id: str, token: str, base_url: str, timeout: Timeout) -> None:
        self.account_id = check_account_id(account_id)
        if not isinstance(token, str) or not token:
            raise TypeError("token must be a non-empty string (a tg_... API token)")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout: Timeout = timeout
        self.last_log_id: str | None = None
        self._token = token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(account_id={self.account_id!r}, base_url={self.base_url!r})"

    # --- the calls --------------------------------------------------------------------------

    def _rest_headers(self) -> dict[str, str | bytes]:
        return {"authorization": f"Bearer {self._token}", "user-agent": USER_AGENT}

    def _dataplane_headers(self) -> dict[str, str | bytes]:
        return {"cf-aig-authorization": f"Bearer {self._token}", "user-agent": USER_AGENT}

    def _run_call(self, model: object, inputs: object, gateway: object, stream: bool) -> Call:
        """The call for `run`: `/ai/run`, for chat and embedding inputs alike."""
        if not isinstance(model, str):
            raise TypeError(f"model must be a string, got {type(model).__name__}")
        provider, _, name = model.partition("/")
        if not provider or not name or provider.startswith("@"):
            # The gateway serves every provider: the model names its provider, or it could not
            # be routed. Refused here, before anything is sent.
            raise ValueError(
                f"model {model!r} does not name its provider: write 'provider/model', "
                "e.g. 'openai/gpt-4o-mini' or 'anthropic/claude-sonnet-4-6'"
            )
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict, got {type(inputs).__name__}")
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, got {type(stream).__name__}")
        if "stream" in inputs and inputs["stream"] is not stream:
            raise ValueError(
                f"inputs['stream'] is {inputs['stream']!r} but stream={stream}: pass stream=True "
                "to get an iterator of chunks (and leave 'stream' out of inputs)"
            )
        gateway_id, option_headers = gateway_headers(gateway)
        if is_embedding(inputs):
            if stream:
                raise ValueError("embeddings are not streamed: call run() with stream=False")
            if "text" in inputs and "input" in inputs:
                raise ValueError("give the texts to embed as inputs['input'] or ['text'], not both")
        chat_input = dict(inputs)
        if stream:
            chat_input["stream"] = True
        headers = {**self._rest_headers(), "cf-aig-gateway-id": gateway_id, **option_headers}
        path = f"/client/v4/accounts/{self.account_id}/ai/run"
        body = {"model": model, "input": chat_input}
        return Call("POST", path, headers, json=body, stream=stream, logged=True)

    def _universal_call(
        self, gateway_id: str, steps: object, gateway: object, stream: bool
    ) -> Call:
        """The call for `Gateway.run`: the steps, with options as the request's headers."""
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, got {type(stream).__name__}")
        _, option_headers = gateway_headers(gateway, id_allowed=False)
        body = universal_steps(steps)
        headers = {**self._dataplane_headers(), **option_headers}
        path = f"/v1/{self.account_id}/{gateway_id}"
        return Call("POST", path, headers, json=body, stream=stream, logged=True)

    def _log_call(
        self, gateway_id: str, log_id: object, method: str = "GET", body: Any = None
    ) -> Call:
        if not isinstance(log_id, str):
            raise TypeError(f"log_id must be a string, got {type(log_id).__name__}")
        if not log_id:
            raise ValueError("log_id must not be empty (it is the cf-aig-log-id header)")
        path = (
            f"/client/v4/accounts/{self.account_id}/ai-gateway/gateways/{gateway_id}"
            f"/logs/{quote(log_id, safe='')}"
        )
        return Call(method, path, self._rest_headers(), json=body)

    def _models_call(self, search: object, provider: object, page: int) -> Call:
        params: dict[str, str | int] = {"page": page, "per_page": MODELS_PER_PAGE}
        for name, value in (("search", search), ("provider", provider)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
            if value:
                params[name] = value
        path = f"/client/v4/accounts/{self.account_id}/ai/models/search"
        return Call("GET", path, self._rest_headers(), params=params)

    # --- sending and the answers -------------------------------------------------------------

    def _request_arguments(self, call: Call) -> dict[str, Any]:
        """`build_request`'s arguments for `call`. A model call forgets the last log id first
        (as the binding does): a call that gets no answer leaves None, not a stale id."""
        if call.logged:
            self.last_log_id = None
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "headers": call.raw_headers(),
            "json": call.json,
            "params": call.params,
            "timeout": self.timeout,
        }

    def _observe(self, call: Call, response: httpx.Response) -> None:
        """Remember a model call's log id (None when the answer had none)."""
        if call.logged:
            self.last_log_id = response.headers.get("cf-aig-log-id")


def patch_body(feedback: object, score: object, metadata: object) -> dict[str, Any]:
    """The PATCH body for `patch_log`: only the fields given (None clears one)."""
    body: dict[str, Any] = {}
    if feedback is not UNSET:
        if feedback is not None and (isinstance(feedback, bool) or not isinstance(feedback, int)):
            raise TypeError(f"feedback must be -1, 1 (or 0) or None, got {type(feedback).__name__}")
        body["feedback"] = feedback
    if score is not UNSET:
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise TypeError(f"score must be a number or None, got {type(score).__name__}")
        body["score"] = score
    if metadata is not UNSET:
        body["metadata"] = None if metadata is None else check_metadata(metadata, "metadata")
    if not body:
        raise ValueError("patch_log needs at least one of feedback, score or metadata")
    return body


def is_embedding(inputs: Mapping[str, Any]) -> bool:
    """An embedding input: `input` or `text`, and neither `messages` nor `prompt`."""
    return not any(key in inputs for key in _CHAT_KEYS) and any(
        key in inputs for key in _EMBEDDING_KEYS
    )


def error_for(response: httpx.Response) -> TollgateError:
    """The typed exception for an error answer whose body has been read."""
    return error_from_response(response.status_code, response.headers, response.content)


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON, or an `UpstreamError` when a success answer is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise build_error(
            502,
            "invalid_response",
            f"The gateway answered HTTP {response.status_code} with a body that is not JSON.",
            param=None,
            body=response.text[:500],
            headers=response.headers,
        ) from None


def run_result(body: Any) -> dict[str, Any]:
    """The model's answer: `/ai/run`'s envelope `{"state", "result", ...}` unwrapped."""
    if isinstance(body, dict) and "result" in body and "state" in body:
        body = body["result"]
    if not isinstance(body, dict):
        raise build_error(
            502,
            "invalid_response",
            "The gateway's answer is not a JSON object.",
            param=None,
            body=body,
            headers={},
        )
    return body


def envelope_result(body: Any) -> Any:
    """The `result` of a Cloudflare v4 envelope."""
    return body.get("result") if isinstance(body, dict) else body


def log_result(body: Any) -> dict[str, Any]:
    """A log as the binding's `getLog` gives it: `created_at` a datetime, `metadata` a dict."""
    log = dict(envelope_result(body) or {})
    created = log.get("created_at")
    if isinstance(created, str):
        log["created_at"] = datetime.fromisoformat(created)
    metadata = log.get("metadata")
    if isinstance(metadata, str):
        with contextlib.suppress(ValueError):  # not JSON: left as the gateway sent it
            log["metadata"] = json.loads(metadata)
    return log


def models_page(body: Any) -> tuple[list[dict[str, Any]], int]:
    """(the page's models, the number of pages)."""
    models = envelope_result(body)
    info = body.get("result_info") if isinstance(body, dict) else None
    pages = info.get("total_pages", 1) if isinstance(info, dict) else 1
    return (list(models) if isinstance(models, list) else []), int(pages or 1)
