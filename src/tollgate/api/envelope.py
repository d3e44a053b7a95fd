"""The Cloudflare v4 envelope for `/client/v4` responses, and its page/per_page pagination.

Success bodies are `{"success": true, "errors": [], "messages": [], "result": ...}`, plus
`result_info` on lists. Errors are rendered by `tollgate.api.render.cloudflare_error_body`.

Pagination follows the official SDK's `V4PagePaginationArray`: it asks for `page + 1` until a
page comes back empty, so a page past the end is an empty list (not an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi.responses import Response
from starlette.requests import Request

from tollgate.api.render import dumps
from tollgate.errors import InvalidRequest, PayloadTooLarge

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 50


def cloudflare_response(
    result: Any, *, result_info: dict[str, Any] | None = None, status: int = 200
) -> Response:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return Response(dumps(body), status_code=status, media_type="application/json")


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as Cloudflare writes `created_at` and `modified_at`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def result_info(self, count: int, total: int) -> dict[str, int]:
        return {
            "page": self.page,
            "per_page": self.per_page,
            "count": count,
            "total_count": total,
            "total_pages": -(-total // self.per_page),
        }


def page_request(
    query: Mapping[str, str],
    *,
    default_per_page: int = DEFAULT_PER_PAGE,
    max_per_page: int = MAX_PER_PAGE,
) -> PageRequest:
    """Parse `page` (from 1) and `per_page` (1 to `max_per_page`) from the query string."""
    page = _positive(query, "page", 1, 10**9)
    per_page = _positive(query, "per_page", default_per_page, max_per_page)
    return PageRequest(page, per_page)


def _positive(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(
            f"{name} must be an integer from 1 to {maximum}; got '{raw[:40]}'",
            code="invalid_field",
            param=name,
        )
    return int(raw)


async def read_json_body(request: Request, limit: int, what: str) -> object:
    """The request's JSON body, refusing (413) more than `limit` bytes before reading it all.

    `what` completes "send ... as a JSON object" in the message for an empty body.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    if not body.strip():
        raise InvalidRequest(
            f"The request body is empty: send {what} as a JSON object.", code="invalid_json"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc}).", code="invalid_json"
        ) from None
