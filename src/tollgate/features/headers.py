"""Reading `cf-aig-*` request headers, with one rule for bad values: a 400 that names the header
and says what it accepts, before anything is stored or sent."""

from __future__ import annotations

from tollgate.errors import InvalidRequest

# No cf-aig-* header value needs more; anything longer is refused rather than parsed.
HEADER_VALUE_MAX = 8192


def gateway_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's `cf-*` headers, in order: every header a feature reads is one of them
    (`cf-aig-*`, and Cloudflare's legacy `cf-cache-ttl` / `cf-skip-cache`).

    One pass over the request's headers; the readers below then scan this short list (empty
    for most requests) instead of each scanning every header. Order is kept, so each reader
    finds the same first value it would find in the full list."""
    return [pair for pair in headers if pair[0].startswith(b"cf-")]


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The header's value (the first, if sent twice), or None. `name` is lowercase."""
    for key, value in headers:
        if key == name:
            if len(value) > HEADER_VALUE_MAX:
                raise invalid_header(
                    name, f"at most {HEADER_VALUE_MAX} bytes", f"{len(value)} bytes"
                )
            return value.decode("latin-1").strip()
    return None


def invalid_header(name: bytes, expected: str, got: str) -> InvalidRequest:
    shown = got if len(got) <= 80 else got[:77] + "..."
    return InvalidRequest(
        f"Invalid {name.decode()} header: expected {expected}, got '{shown}'.",
        code="invalid_header",
        param=name.decode(),
    )


def boolean_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bool | None:
    """`true` / `false` (any case), or None when absent."""
    value = header(headers, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise invalid_header(name, "'true' or 'false'", value)


def integer_header(
    headers: list[tuple[bytes, bytes]], name: bytes, low: int, high: int, unit: str = ""
) -> int | None:
    """An integer within [low, high], or None when absent."""
    value = header(headers, name)
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise invalid_header(name, f"an integer from {low} to {high}{unit}", value)
    return int(value)
