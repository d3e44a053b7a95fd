"""Reading client JSON field by field: every refusal names the field, in the client's own path
syntax (`messages[2].content[0].image_url.url`), and says what to send instead."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from tollgate.canonical import ImagePart
from tollgate.errors import InvalidRequest

_DATA_URL = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),", re.ASCII)


def invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", param=field)


def unsupported(field: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: {what} is not supported when translating between providers; "
        "remove it, or call the provider's native endpoint.",
        code="unsupported_feature",
        param=field,
    )


def require_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(field, "must be a JSON object.")
    return value


def require_list(value: Any, field: str, *, non_empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(field, "must be an array.")
    if non_empty and not value:
        raise invalid(field, "must not be empty.")
    return value


def require_str(body: Mapping[str, Any], key: str, field: str | None = None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise invalid(field or key, "is required and must be a non-empty string.")
    return value


def opt_str(body: Mapping[str, Any], key: str, field: str | None = None) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid(field or key, "must be a string.")


def opt_bool(body: Mapping[str, Any], key: str, field: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid(field or key, "must be true or false.")


def opt_number(body: Mapping[str, Any], key: str, field: str | None = None) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field or key, "must be a number.")
    return float(value)


def opt_int(
    body: Mapping[str, Any], key: str, field: str | None = None, *, minimum: int = 0
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field or key, "must be an integer.")
    if value < minimum:
        raise invalid(field or key, f"must be at least {minimum}.")
    return value


def str_list(value: Any, field: str) -> tuple[str, ...]:
    """A string or an array of strings (OpenAI `stop` takes both)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise invalid(field, "must be a string or an array of strings.")


def str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    raise invalid(field, "must be an object whose values are strings.")


def decode_base64(data: Any, field: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise invalid(field, "must be non-empty base64 data.")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "is not valid base64.") from None


def image_from_url(url: Any, field: str, detail: str | None = None) -> ImagePart:
    """A `data:` URL becomes inline bytes; an http(s) URL stays a URL for the adapter."""
    if not isinstance(url, str) or not url:
        raise invalid(field, "must be a non-empty URL string.")
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None or ";base64" not in match.group(2):
            raise invalid(field, "a data URL must look like data:image/png;base64,<data>.")
        media_type = match.group(1) or "application/octet-stream"
        data = decode_base64(url[match.end() :], field)
        return ImagePart(data=data, media_type=media_type, detail=detail)
    if url.startswith(("https://", "http://")):
        return ImagePart(url=url, detail=detail)
    raise invalid(field, "must be an https URL or a data: URL.")
