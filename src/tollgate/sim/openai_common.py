"""OpenAI wire pieces shared by the simulated Chat Completions and Responses APIs: auth, the
error shape, response headers, message text extraction and the reasoning-model rule.

- Auth is ``Authorization: Bearer <key>``. Missing -> 401 ``invalid_request_error`` ("You didn't
  provide an API key...", code ``null``); ``sim-invalid-key`` -> 401 with code ``invalid_api_key``.
- Errors are ``{"error": {"message", "type", "param", "code"}}``; 429s carry ``retry-after``.
- Responses carry ``x-request-id``, ``openai-processing-ms`` and ``openai-version``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from tollgate.sim.engine import new_id
from tollgate.sim.http import INVALID_KEY, Call, JsonObject, Provider, SimError

CREATED = 1_700_000_000
SYSTEM_FINGERPRINT = "fp_sim0000000"
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o3",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
# Tool-call arguments stream in this many pieces unless x-sim-chunks says otherwise.
ARGUMENT_CHUNKS = 3
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username. You "
    "can obtain an API key from https://platform.openai.com/account/api-keys."
)
_MESSAGES = {
    400: "The simulated upstream rejected this request as invalid.",
    401: "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    403: "You are not allowed to sample from this model.",
    404: "The model does not exist or you do not have access to it.",
    429: "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
    "Please try again in 1s.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}
_TYPES = {429: "requests", 401: "invalid_request_error"}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


def openai_error(status: int, message: str, code: str | None) -> SimError:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return SimError(
        status,
        {
            "error": {
                "message": message,
                "type": kind,
                "param": None,
                "code": code or _CODES.get(status),
            }
        },
    )


def _check_auth(request: Request) -> None:
    scheme, _, key = (request.headers.get("authorization") or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        error = openai_error(401, _MISSING_KEY, None)
        error.body["error"]["code"] = None  # OpenAI sends no code for a missing key
        raise error
    if key == INVALID_KEY:
        raise openai_error(
            401,
            f"Incorrect API key provided: {INVALID_KEY}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_api_key",
        )


def _headers() -> dict[str, str]:
    return {"x-request-id": new_id("req_", 32), "openai-version": "2020-10-01"}


def message_text(content: Any) -> tuple[str, int]:
    """The text of a message ``content`` (string or parts) and its count of media parts."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    media = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            media += 1
    return "\n".join(texts), media


def last_user_text(body: JsonObject) -> str:
    """The last user message's text: Chat ``messages`` or Responses ``input`` (string or items)."""
    items = body.get("messages", body.get("input"))
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            try:
                return message_text(item.get("content"))[0]
            except TypeError:
                return ""
    return ""


PROVIDER = Provider(
    name="openai",
    error=openai_error,
    check_auth=_check_auth,
    headers=_headers,
    prompt_of=last_user_text,
    bad_json_message=(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)"
    ),
    default_messages=_MESSAGES,
)


def is_reasoning_model(model: str, effort: Any) -> bool:
    """o-series and GPT-5 models reason, unless asked for ``reasoning_effort: "none"``."""
    return bool(_REASONING_MODEL.match(model)) and effort != "none"


def require_model(call: Call) -> None:
    """OpenAI's 400 when ``model`` is missing."""
    if not call.model:
        raise openai_error(400, "you must provide a model parameter", None)


def tool_choice(choice: Any) -> str:
    if choice == "none":
        return "none"
    if isinstance(choice, dict):
        function = choice.get("function") or {}
        return str(function.get("name") or choice.get("name") or "auto")
    return "auto"
