"""The custom provider object: Cloudflare's fields, their defaults and their validation.

Pure: no I/O, no settings (the caller passes `allow_http`, from `[custom_providers] allow_http`,
and the address policy, from `[upstream] allowed_private_networks`).
The management API parses bodies with `parse_custom_provider_create` / `_update` and list queries
with `parse_list_query`; the data plane's cache turns the stored `headers` into pairs with
`header_pairs`. The fields are those of the official SDK's `custom_provider_create_params`:
`name`, `slug`, `base_url` (required), `description`, `link`, `enable` (default false), `beta`
(default false), `curl_example`, `js_example`, `headers` (a JSON object encoded as a string) and
`position`. A provider is reached on the data plane as `custom-{slug}`.

Decisions, where Cloudflare's documents leave a choice:

- `slug` is 1 to 64 characters of `[a-z0-9-]`, unique in the account (409 otherwise). It may be
  changed by PATCH; the old `custom-{slug}` then stops answering.
- `base_url` is an absolute `https://` URL of at most 2048 ASCII characters (`http://` too when
  the operator allows it). It must name a host, and must not carry a user name or password (put
  credentials in `headers`), a query string (the request's own query is appended to
  `{base_url}/{path}`) or a fragment. IPv4 addresses must be written as four decimal numbers
  (`127.1` or `0x7f000001` would otherwise slip through). A host that is `localhost` or an IP
  address outside the public internet (loopback, private, link-local such as the cloud metadata
  address 169.254.169.254, ...: `tollgate.netguard`) is refused unless the operator allows its
  network (`[upstream] allowed_private_networks`); `allow_http` is about the scheme only. A host
  *name* that resolves to such an address is refused by the management API (one DNS lookup) and,
  whatever it resolves to later, when the data plane connects (`tollgate.upstream`).
  The URL is stored and echoed as sent; the data plane drops trailing slashes before appending.
- `headers` is null, `""`, or a JSON object (as a string) of at most 32 header names to string
  values. `""` and `"{}"` mean no headers and are stored as null. Names are HTTP tokens, unique
  ignoring case. Values may be credentials (`authorization`, `x-api-key`: that is the point, as in
  Cloudflare's API), are at most 8192 printable ASCII characters, and are never echoed in error
  messages. Refused: hop-by-hop and framing headers (`connection`, `host`, `content-length`,
  `transfer-encoding`, `te`, `upgrade`, `proxy-*`, ..., which could desynchronise or redirect the
  hop), `content-type` and `accept-encoding` (the client's request owns them), `expect`, gateway
  headers (`cf-aig-*`, never sent upstream), and any value holding a tollgate token (tollgate
  tokens never reach an upstream). The stored string is the canonical JSON of what was accepted.
- `description`, `curl_example`, `js_example` are strings (at most 10,000 / 65,536 / 65,536
  characters) or null; `link` an http(s) URL or null (`""` is stored as null); `position` an
  integer from 0 to 2^31-1 or null; `name` a non-empty string of at most 200 characters.
- Read-only fields (`created_at`, `modified_at`, `logo`) are accepted and ignored, so a client may
  send back an object it read. `id` is assigned by tollgate: refused on create, and on PATCH it must
  equal the id in the URL. Any other unknown field is refused with 400 naming it.
- PATCH changes only the fields it sends; `name`, `slug`, `base_url`, `enable` and `beta` cannot be
  null, the others may be set to null to clear them.
- Lists: `enable` and `beta` filter on `true`/`false`; `search` (at most 200 characters) matches
  id, slug or name, ignoring case; `order_by` is `<field> [ASC|DESC]` over `name` (ignoring case),
  `slug`, `position` (providers without one last), `created_at` or `modified_at`, default
  `name ASC`; ties are broken by id so pages are stable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from tollgate.api.auth import bearer_value, looks_like_token
from tollgate.errors import InvalidRequest
from tollgate.gateway_config import Validator, boolean, integer, invalid, text
from tollgate.netguard import ALLOW_SETTING, PUBLIC_ONLY, AddressPolicy, literal_address_refused
from tollgate.upstream import HOP_BY_HOP

SLUG_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200
URL_MAX_LENGTH = 2048
DESCRIPTION_MAX_LENGTH = 10_000
EXAMPLE_MAX_LENGTH = 65_536
HEADERS_MAX = 32
HEADER_NAME_MAX_LENGTH = 256
HEADER_VALUE_MAX_LENGTH = 8192
SEARCH_MAX_LENGTH = 200
_POSITION_MAX = 2**31 - 1

REQUIRED_FIELDS = ("name", "slug", "base_url")
READ_ONLY_FIELDS = frozenset({"created_at", "modified_at", "logo"})
ORDER_FIELDS = ("name", "slug", "position", "created_at", "modified_at")
DEFAULT_ORDER = "name ASC"

# Every pattern is used with fullmatch: with match, `$` also matches before a trailing newline.
_SLUG = re.compile(r"[a-z0-9-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_FORBIDDEN_HEADERS = frozenset(
    {name.decode() for name in HOP_BY_HOP} | {"content-type", "accept-encoding", "expect"}
)
_LINK = re.compile(r"https?://[^\s/?#@]+\S*")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


# --- single fields --------------------------------------------------------------------------


def validate_slug(value: object, field: str = "slug") -> str:
    """A slug: 1 to 64 characters of lowercase letters, digits and '-'."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= SLUG_MAX_LENGTH
        or not _SLUG.fullmatch(value)
    ):
        raise invalid(
            field,
            f"1 to {SLUG_MAX_LENGTH} characters of lowercase letters, digits and '-' "
            "(the provider is then reached as custom-{slug})",
            value,
        )
    return value


def validate_base_url(
    value: object,
    *,
    allow_http: bool,
    policy: AddressPolicy = PUBLIC_ONLY,
    field: str = "base_url",
) -> str:
    """The upstream's base URL; see the module docstring for what is refused and why."""
    expected = "an https:// URL" if not allow_http else "an https:// or http:// URL"
    if not isinstance(value, str) or not 0 < len(value) <= URL_MAX_LENGTH:
        raise invalid(field, f"{expected} of at most {URL_MAX_LENGTH} characters", value)
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise invalid(
            field,
            f"{expected} without spaces, control or non-ASCII characters (write an "
            "internationalised host name in its xn-- form)",
            value,
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # an unclosed [IPv6] host, or a port that is not a number in range
        raise invalid(field, f"{expected} with a valid host and port", value) from None
    if parts.scheme == "http" and not allow_http:
        raise _refused(
            field,
            "must be an https:// URL: http:// is refused unless the operator sets "
            "[custom_providers] allow_http = true (TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP=true)",
        )
    if parts.scheme not in ("https", "http") or not value.lower().startswith(parts.scheme + "://"):
        raise invalid(field, expected, value)
    if "@" in parts.netloc:
        raise _refused(
            field,
            "must not contain a user name or password (user:password@host); "
            "send credentials in headers instead",
        )
    if "#" in value:
        raise _refused(field, "must not contain a fragment (#...)")
    if "?" in value:
        raise _refused(
            field,
            "must not contain a query string (?...): the request's own query is appended "
            "to {base_url}/{path}",
        )
    if not parts.hostname or port == 0:
        raise invalid(field, f"{expected} with a host (and a port from 1 to 65535, if any)", value)
    _check_host(parts.hostname, parts.netloc, value, field, policy)
    return value


def _check_host(host: str, netloc: str, value: str, field: str, policy: AddressPolicy) -> None:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if netloc.rsplit("@", 1)[-1].startswith("["):
        try:
            address = ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise invalid(field, "a URL whose [...] host is an IPv6 address", value) from None
    elif not _HOSTNAME.fullmatch(host):
        raise invalid(field, "a URL with a valid host name", value)
    elif _looks_numeric(host):
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise invalid(
                field, "a URL whose IPv4 host is written as four decimal numbers", value
            ) from None
    if literal_address_refused(str(address) if address else host, policy):
        raise private_host_refused(field, host)


def private_host_refused(field: str, host: str, *, resolved: bool = False) -> InvalidRequest:
    what = "resolves to a local or private address" if resolved else "is local or private"
    return _refused(
        field,
        f"must point at a public host; '{host}' {what}. The operator may allow an inference "
        f"server's network with {ALLOW_SETTING}",
    )


def _looks_numeric(host: str) -> bool:
    """True for any host that getaddrinfo would read as an IPv4 address (127.1, 0x7f.1, ...)."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return last.isdigit() or last.startswith("0x")


def _refused(field: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {reason}", code="invalid_field", param=field)


def validate_link(value: object, field: str = "link") -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > URL_MAX_LENGTH or not _LINK.fullmatch(value):
        raise invalid(field, "an http:// or https:// URL or null", value)
    return value


def optional_text(max_length: int) -> Validator:
    expected = f"a string of at most {max_length} characters or null"

    def check(value: object, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > max_length:
            raise invalid(field, expected, value)
        return value

    return check


def parse_headers(value: object, field: str = "headers") -> str | None:
    """Validate `headers` (a JSON object as a string); returns canonical JSON, or None if empty.

    Error messages name the header but never repeat a value: values are often credentials.
    """
    expected = (
        "a JSON object of header names to string values, encoded as a string "
        '(for example "{\\"x-api-key\\": \\"...\\"}"), or null'
    )
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be {expected}", code="invalid_field", param=field)
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"{field} must be {expected}; it is not valid JSON ({exc})",
            code="invalid_field",
            param=field,
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{field} must be {expected}", code="invalid_field", param=field)
    if len(parsed) > HEADERS_MAX:
        raise _refused(field, f"may hold at most {HEADERS_MAX} headers; got {len(parsed)}")
    seen: set[str] = set()
    for name, header_value in parsed.items():
        _check_header(name, header_value, field, seen)
    return orjson.dumps(parsed).decode() if parsed else None


def _check_header(name: str, value: object, field: str, seen: set[str]) -> None:
    shown = name if len(name) <= 60 else name[:57] + "..."
    if not 0 < len(name) <= HEADER_NAME_MAX_LENGTH or not _HEADER_NAME.fullmatch(name):
        raise _refused(field, f"has an invalid header name '{shown}': use letters, digits and -")
    lowered = name.lower()
    if lowered in seen:
        raise _refused(field, f"names header '{shown}' twice (header names ignore case)")
    seen.add(lowered)
    if lowered in _FORBIDDEN_HEADERS or lowered.startswith("proxy-"):
        raise _refused(
            field,
            f"cannot set '{shown}': tollgate sets it for each request (hop-by-hop, framing or "
            "content headers are not configurable)",
        )
    if lowered.startswith("cf-aig-"):
        raise _refused(
            field, f"cannot set '{shown}': cf-aig-* headers are for the gateway, never upstream"
        )
    if not isinstance(value, str):
        raise _refused(field, f"header '{shown}' must have a string value")
    if len(value) > HEADER_VALUE_MAX_LENGTH or not _HEADER_VALUE.fullmatch(value):
        raise _refused(
            field,
            f"header '{shown}' must have a value of at most {HEADER_VALUE_MAX_LENGTH} printable "
            "ASCII characters (no line breaks)",
        )
    candidate = bearer_value(value) or value.strip()
    if looks_like_token(candidate):
        raise _refused(
            field,
            f"header '{shown}' holds a tollgate token; tollgate tokens are never sent to an "
            "upstream. Use the provider's own key",
        )


def header_pairs(headers: str | None) -> tuple[tuple[str, str], ...]:
    """Stored `headers` as (lowercase name, value) pairs, in the order they were given."""
    if not headers:
        return ()
    parsed: dict[str, str] = orjson.loads(headers)
    return tuple((name.lower(), value) for name, value in parsed.items())


# --- whole bodies ---------------------------------------------------------------------------


def _validators(allow_http: bool, policy: AddressPolicy = PUBLIC_ONLY) -> dict[str, Validator]:
    def base_url(value: object, field: str) -> str:
        return validate_base_url(value, allow_http=allow_http, policy=policy, field=field)

    return {
        "name": text(NAME_MAX_LENGTH),
        "slug": validate_slug,
        "base_url": base_url,
        "description": optional_text(DESCRIPTION_MAX_LENGTH),
        "link": validate_link,
        "enable": boolean,
        "beta": boolean,
        "curl_example": optional_text(EXAMPLE_MAX_LENGTH),
        "js_example": optional_text(EXAMPLE_MAX_LENGTH),
        "headers": parse_headers,
        "position": integer(0, _POSITION_MAX, nullable=True),
    }


FIELDS = tuple(_validators(False))


def default_custom_provider_fields() -> dict[str, Any]:
    """The optional fields of a new custom provider, with Cloudflare's defaults."""
    return {
        "description": None,
        "link": None,
        "enable": False,
        "beta": False,
        "curl_example": None,
        "js_example": None,
        "headers": None,
        "position": None,
    }


def parse_custom_provider_create(
    body: object, *, allow_http: bool, policy: AddressPolicy = PUBLIC_ONLY
) -> dict[str, Any]:
    """Validate a create body; returns every stored field (the defaults filled in)."""
    fields = _body(body)
    if "id" in fields:
        raise InvalidRequest(
            "id is assigned by tollgate when a custom provider is created; leave it out",
            code="invalid_field",
            param="id",
        )
    _refuse_unknown(fields)
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise InvalidRequest(
            f"missing required field '{missing[0]}': creating a custom provider needs "
            f"{', '.join(REQUIRED_FIELDS)}",
            code="missing_field",
            param=missing[0],
        )
    values: dict[str, Any] = {**default_custom_provider_fields()}
    for name, validate in _validators(allow_http, policy).items():
        if name in fields:
            values[name] = validate(fields[name], name)
    return values


def parse_custom_provider_update(
    body: object, provider_id: str, *, allow_http: bool, policy: AddressPolicy = PUBLIC_ONLY
) -> dict[str, Any]:
    """Validate a PATCH body; returns only the fields to change."""
    fields = _body(body)
    if "id" in fields and fields["id"] != provider_id:
        raise InvalidRequest(
            f"id cannot be changed (the URL names custom provider '{provider_id}'); leave id "
            "out of the body",
            code="invalid_field",
            param="id",
        )
    _refuse_unknown(fields)
    return {
        name: validate(fields[name], name)
        for name, validate in _validators(allow_http, policy).items()
        if name in fields
    }


def _body(body: object) -> Mapping[str, object]:
    if not isinstance(body, dict):
        try:
            shown = orjson.dumps(body).decode()
        except TypeError:  # not JSON (a Python caller's value)
            shown = repr(body)
        raise InvalidRequest(
            "The request body must be a JSON object of custom provider fields; got "
            + (shown if len(shown) <= 60 else shown[:57] + "..."),
            code="invalid_body",
        )
    return body


def _refuse_unknown(fields: Mapping[str, object]) -> None:
    unknown = sorted(
        k for k in fields if k not in FIELDS and k not in READ_ONLY_FIELDS and k != "id"
    )
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        raise InvalidRequest(
            f"unknown field {names}: a custom provider has no such field "
            f"(fields: {', '.join(FIELDS)})",
            code="unknown_field",
            param=unknown[0],
        )


# --- list queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters and order of a list request (paging is `envelope.page_request`)."""

    enable: bool | None = None
    beta: bool | None = None
    search: str | None = None
    order_by: str = "name"
    descending: bool = False


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    search = query.get("search") or None
    if search is not None and len(search) > SEARCH_MAX_LENGTH:
        raise _refused("search", f"must be at most {SEARCH_MAX_LENGTH} characters")
    order_by, descending = _order(query.get("order_by") or DEFAULT_ORDER)
    return ListQuery(
        enable=_flag(query, "enable"),
        beta=_flag(query, "beta"),
        search=search,
        order_by=order_by,
        descending=descending,
    )


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() not in ("true", "false"):
        raise invalid(name, "true or false", raw)
    return raw.lower() == "true"


def _order(raw: str) -> tuple[str, bool]:
    words = raw.split()
    direction = words[1].upper() if len(words) == 2 else "ASC"
    if not 1 <= len(words) <= 2 or words[0] not in ORDER_FIELDS or direction not in ("ASC", "DESC"):
        raise invalid(
            "order_by",
            f"a field ({', '.join(ORDER_FIELDS)}) optionally followed by ASC or DESC, "
            f'such as "{DEFAULT_ORDER}"',
            raw,
        )
    return words[0], direction == "DESC"
