"""Which key pays for a request (PRODUCT.md §3), decided from the inbound headers. Pure.

A provider-key header whose value is a tollgate token (`Bearer tg_...`, `x-api-key: tg_...`,
`x-goog-api-key: tg_...`, `?key=tg_...`) authenticates the caller and is not a provider key; so
every official SDK works with `api_key=<tollgate token>`. Any other value in those headers is the
client's own provider key and is forwarded unchanged (BYOK pass-through). Gateway headers
(`cf-aig-*`) and tollgate tokens never reach an upstream.

`choose_upstream` then decides who pays and where the request goes (PRODUCT.md §3, Cloudflare's
precedence): the client's own key (BYOK) passes through; else the gateway's stored key for the
provider (`cf-aig-byok-alias`, default alias `default`); else Unified Billing with the operator's
managed key, unless `byok_only` or `cf-aig-no-wholesale: true` forbids it (400). Only Unified
Billing requests are ever rerouted to the operator's ZDR credentials (gateway `zdr`, header
`cf-aig-zdr`); without ZDR credentials for the provider they fall back to the standard ones,
or are refused when the gateway has `zdr_strict` (tollgate's addition).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from tollgate.api.auth import bearer_value, looks_like_token
from tollgate.errors import InvalidRequest
from tollgate.features.context import CredentialSource, RequestContext
from tollgate.features.headers import boolean_header, header, invalid_header
from tollgate.features.stored_keys import ALIAS, ALIAS_HEADER, ALIAS_RULE, DEFAULT_ALIAS
from tollgate.providers.registry import AuthStyle, ProviderRow
from tollgate.services import Services, UpstreamTarget
from tollgate.settings import Settings
from tollgate.store import GatewayRecord
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
        if name.startswith(b"cf-"):
            # The gateway's own headers (`cf-aig-*`, and Cloudflare's legacy `cf-cache-ttl`,
            # `cf-skip-cache`) are read by the gateway and never reach a provider.
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


# --- who pays, and where the request goes ---------------------------------------------------

NO_WHOLESALE_HEADER = b"cf-aig-no-wholesale"
ZDR_HEADER = b"cf-aig-zdr"


@dataclass(frozen=True, slots=True)
class CredentialOptions:
    """The request's credential headers, read (and refused when bad) before any other step."""

    alias: str | None  # cf-aig-byok-alias
    no_wholesale: bool  # cf-aig-no-wholesale: true
    zdr: bool | None  # cf-aig-zdr, None: the gateway's `zdr` decides


def credential_options(headers: list[tuple[bytes, bytes]]) -> CredentialOptions:
    alias = header(headers, ALIAS_HEADER)
    if alias is not None and not ALIAS.fullmatch(alias):
        raise invalid_header(ALIAS_HEADER, f"a stored key's alias ({ALIAS_RULE})", alias)
    no_wholesale = boolean_header(headers, NO_WHOLESALE_HEADER)
    return CredentialOptions(alias, bool(no_wholesale), boolean_header(headers, ZDR_HEADER))


@dataclass(frozen=True, slots=True)
class Chosen:
    source: CredentialSource
    base_url: str
    # The credential header to add. Empty for a native BYOK request, whose key already travels
    # in the client's own headers.
    auth: list[tuple[str, str]]
    zdr: bool  # the operator's ZDR credentials were used

    @property
    def unified(self) -> bool:
        """The operator's managed key pays: credits are drawn (Unified Billing)."""
        return self.source == "unified"


def zdr_response_header(ctx: RequestContext) -> tuple[bytes, bytes]:
    """`cf-aig-zdr: true|false`: whether the operator's ZDR credentials served the request."""
    return (ZDR_HEADER, b"true" if ctx.zdr else b"false")


async def choose_upstream(
    services: Services,
    ctx: RequestContext,
    gateway: GatewayRecord,
    row: ProviderRow,
    options: CredentialOptions,
    *,
    byok: bool,
    client_key: str | None = None,
) -> Chosen:
    """The credentials and base URL for a request to `row`'s provider; fills in `ctx`.

    `byok`: the client sent its own provider key (`client_key` when it must be re-sent the
    provider's way, as on the Unified API)."""
    target = services.providers.get(row.slug)
    if byok:
        chosen = Chosen("byok", _base_url(row, target), _client_auth(row, client_key), False)
    else:
        stored = await services.stored_keys.find(
            gateway.account_id, gateway.id, row.slug, options.alias
        )
        if stored is not None:
            chosen = Chosen(
                "stored", _base_url(row, target), [managed_key_header(row.auth, stored)], False
            )
        else:
            _refuse_unless_unified_allowed(gateway, row, options)
            chosen = _unified(gateway, row, target, options)
    ctx.credential_source, ctx.zdr = chosen.source, chosen.zdr
    return chosen


def _client_auth(row: ProviderRow, client_key: str | None) -> list[tuple[str, str]]:
    return [managed_key_header(row.auth, client_key)] if client_key else []


def _base_url(row: ProviderRow, target: UpstreamTarget | None) -> str:
    if target is None:
        raise InvalidRequest(
            f"The provider {row.slug} has no base URL on this tollgate server; the operator "
            f"must set providers.{row.slug}.base_url.",
            code="provider_not_configured",
        )
    return target.base_url


def _refuse_unless_unified_allowed(
    gateway: GatewayRecord, row: ProviderRow, options: CredentialOptions
) -> None:
    """`byok_only` and `cf-aig-no-wholesale: true` forbid the managed key; the header's `false`
    cannot relax the gateway's setting."""
    by_gateway = bool(gateway.config.get("byok_only"))
    if not by_gateway and not options.no_wholesale:
        return
    why = (
        f"gateway {gateway.id} requires provider credentials (byok_only)"
        if by_gateway
        else "the request sent 'cf-aig-no-wholesale: true'"
    )
    alias = options.alias or DEFAULT_ALIAS
    raise InvalidRequest(
        f"Unified Billing is not allowed for this request: {why}, and it carries no {row.slug} "
        f"key of its own while gateway {gateway.id} stores none under the alias '{alias}'. "
        "Send your own provider key, or store one with POST "
        f".../ai-gateway/gateways/{gateway.id}/provider_configs.",
        code="provider_credentials_required",
        param=None if by_gateway else NO_WHOLESALE_HEADER.decode(),
    )


def _unified(
    gateway: GatewayRecord,
    row: ProviderRow,
    target: UpstreamTarget | None,
    options: CredentialOptions,
) -> Chosen:
    wants_zdr = options.zdr if options.zdr is not None else bool(gateway.config.get("zdr"))
    if wants_zdr and target is not None and target.zdr is not None:
        return Chosen("unified", target.zdr.base_url, upstream_auth(row, target.zdr), True)
    if wants_zdr and gateway.config.get("zdr_strict"):
        raise InvalidRequest(
            f"Zero Data Retention was asked for (gateway zdr or cf-aig-zdr: true), but this "
            f"tollgate server has no ZDR credentials for {row.slug}, and gateway {gateway.id} "
            "has zdr_strict on, so the request is refused rather than sent with the standard "
            "credentials. Send 'cf-aig-zdr: false' to allow that, or use a provider with ZDR.",
            code="zdr_unavailable",
            param=ZDR_HEADER.decode() if options.zdr is not None else None,
        )
    auth = upstream_auth(row, target)
    assert target is not None  # upstream_auth refuses a provider without one
    return Chosen("unified", target.base_url, auth, False)


def managed_targets(settings: Settings) -> dict[str, UpstreamTarget]:
    """Each configured provider's managed target, with its ZDR variant when the operator set
    `zdr_base_url` and/or `zdr_api_key` (the part not set is the standard one)."""
    targets: dict[str, UpstreamTarget] = {}
    for slug, conf in settings.providers.items():
        if conf.base_url is None:
            continue
        key = conf.api_key.get_secret_value() if conf.api_key else None
        zdr = None
        if conf.zdr_base_url or conf.zdr_api_key:
            zdr_key = conf.zdr_api_key.get_secret_value() if conf.zdr_api_key else key
            zdr = UpstreamTarget(slug, conf.zdr_base_url or conf.base_url, zdr_key)
        targets[slug] = UpstreamTarget(slug, conf.base_url, key, zdr)
    return targets
