"""Which key pays for a request (PRODUCT.md §3), decided from the inbound headers. Pure.

A provider-key header whose value is a tollgate token (`Bearer tg_...`, `x-api-key: tg_...`,
`x-goog-api-key: tg_...`, `?key=tg_...`) authenticates the caller and is not a provider key; so
every official SDK works with `api_key=<tollgate token>`. Any other value in those headers is the
client's own provider key and is forwarded unchanged (BYOK pass-through). Gateway headers
(`cf-aig-*`) and tollgate tokens never reach an upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from tollgate.api.auth import bearer_value, looks_like_token
from tollgate.errors import InvalidRequest
from tollgate.providers.registry import AuthStyle, ProviderRow
from tollgate.services import UpstreamTarget
from tollgate.upstream import HOP_BY_HOP

_PROVIDER_KEY_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})
_NEVER_FORWARDED = HOP_BY_HOP | {b"accept-encoding", b"cookie"}


@dataclass(slots=True)
class InboundCredentials:
    token: str | None  # the tollgate token that authenticates the caller, if any
    provider_key: bool  # the client sent its own provider key
    headers: list[tuple[str, str]]  # what may be forwarded upstream
    query: str  # the query string, minus a `key=` that held a tollgate token
    # The client's own key itself, for translated requests that must carry it another way.
    provider_key_value: str | None = None


def split_credentials(raw_headers: list[tuple[bytes, bytes]], query: bytes) -> InboundCredentials:
    token: str | None = None
    fallback_token: str | None = None
    provider_key = False
    key_value: str | None = None
    forwarded: list[tuple[str, str]] = []
    for name, raw_value in raw_headers:
        if name.startswith(b"cf-aig-"):
            if name == b"cf-aig-authorization":
                token = bearer_value(raw_value.decode("latin-1")) or raw_value.decode("latin-1")
            continue
        if name in _NEVER_FORWARDED:
            continue
        value = raw_value.decode("latin-1")
        if name in _PROVIDER_KEY_HEADERS:
            candidate = bearer_value(value) if name == b"authorization" else value.strip()
            if candidate and looks_like_token(candidate):
                fallback_token = fallback_token or candidate
                continue
            provider_key = True
            key_value = key_value or candidate
        forwarded.append((name.decode("latin-1"), value))
    query_text = query.decode("latin-1")
    if b"key=" in query:
        kept = []
        for key, value in parse_qsl(query_text, keep_blank_values=True):
            if key == "key" and looks_like_token(value):
                fallback_token = fallback_token or value
            else:
                if key == "key":
                    provider_key = True
                    key_value = key_value or value
                kept.append((key, value))
        query_text = urlencode(kept)
    return InboundCredentials(
        token or fallback_token, provider_key, forwarded, query_text, key_value
    )


def upstream_auth(
    row: ProviderRow, target: UpstreamTarget | None, client_key: str | None = None
) -> list[tuple[str, str]]:
    """The credential header for the upstream: the client's own key when it sent one (carried
    the provider's way), else the operator's managed key. A provider this gateway has no
    configuration for, or no managed key for, is refused before anything is sent."""
    if target is None:
        raise _unavailable(row)
    key = client_key or target.api_key
    if key:
        return [managed_key_header(row.auth, key)]
    if row.key_required:
        raise _unavailable(row)
    return []  # e.g. the operator's own inference server, which takes no key


def _unavailable(row: ProviderRow) -> InvalidRequest:
    return InvalidRequest(
        f"The provider {row.slug} is not available through Unified Billing on this gateway. "
        "Send your own provider key with the request.",
        code="unified_billing_unavailable",
    )


def managed_key_header(style: AuthStyle, key: str) -> tuple[str, str]:
    """The header that carries the operator's managed key, the provider's own way."""
    if style == "bearer":
        return ("authorization", f"Bearer {key}")
    return (style, key)
