"""Requests of the access matrix (tests/e2e/test_access_matrix.py): real ids in the path, a body
that would change something if it got through, and the credential each kind of caller holds.

What counts as a leak is decided here too (`leaks`): any of the victim's data that the caller
did not send itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.access_endpoints import PARAM, Endpoint, parameters
from tests.support.access_rules import DASHBOARD, RUN, Access
from tests.support.access_world import FULL, DashSession, World
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tollgate.providers.registry import PROVIDERS


@dataclass
class Probe:
    """One request of one cell."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    content: bytes | None = None
    via: str = ""  # how the credential travels, when a cell sends it more than one way

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.request(
            self.method,
            self.path,
            headers=self.headers,
            json=self.json,
            data=self.form,
            content=self.content,
        )

    def sent(self) -> str:
        """Everything the caller put in the request: what it may see again in the answer."""
        return " ".join(
            [self.path, repr(self.headers), repr(self.json), repr(self.form), repr(self.content)]
        )


def fill(path: str, account_id: str, world: World) -> str:
    """The template with real values: `account_id` (the victim's or the attacker's) and the
    victim's objects."""
    values = {
        "account_id": account_id,
        "gateway_id": world.gateway_id,
        "log_id": world.log_id,
        "custom_provider_id": world.custom_provider_id,
        "config_id": world.config_id,
        "token_id": world.victim.tokens[FULL].id,
        "topup_id": world.topup_id,
        "provider": "openai",
        "slug": world.custom_slug,
        "rest": f"/{world.victim.account_id}",  # /dash{rest}: the short dashboard path
    }
    names = iter(parameters(path))

    def value(match: re.Match[str]) -> str:
        name = next(names)
        if name == "path":
            return native_path(path, world) if path.startswith("/v1/") else "dashboard.css"
        if name not in values:
            raise AssertionError(
                f"no value of the victim's for path parameter {{{name}}} of {path}"
            )
        return values[name]

    return PARAM.sub(value, path)


# --- the data plane ----------------------------------------------------------------------------


def provider_of(path: str) -> str | None:
    """The native provider slug of a data-plane template (None for the other surfaces)."""
    parts = path.split("/")
    return (
        parts[4] if path.startswith("/v1/") and len(parts) > 5 and parts[4] in PROVIDERS else None
    )


def native_path(path: str, world: World) -> str:
    slug = provider_of(path)
    if slug is None:  # custom-{slug}: an OpenAI-compatible server
        return "chat/completions"
    row = PROVIDERS[slug]
    if row.wire == "anthropic":
        return "v1/messages"
    if row.wire == "google":
        return f"v1beta/models/{world.models.get(slug, 'gemini-2.0-flash')}:generateContent"
    return f"{row.api_prefix}chat/completions"


def dataplane_body(path: str, world: World) -> Any:
    """A request the gateway would serve and bill, if the caller were let through."""
    prompt = [{"role": "user", "content": "attacker prompt"}]
    slug = provider_of(path)
    model = world.models.get(slug or "openai", "gpt-4o-mini")
    wire = PROVIDERS[slug].wire if slug is not None else None
    if wire == "anthropic" or path.endswith("/ai/v1/messages"):
        return {"model": _qualified(path, "anthropic", world), "max_tokens": 16, "messages": prompt}
    if wire == "google":
        return {"contents": [{"parts": [{"text": "attacker prompt"}]}]}
    if slug is not None or "/custom-" in path:
        return {"model": model, "messages": prompt}
    if path.endswith("/embeddings"):
        return {"model": "openai/text-embedding-3-small", "input": "attacker input"}
    if path.endswith("/responses"):
        return {"model": "openai/gpt-4o-mini", "input": "attacker input"}
    if path.endswith("/ai/run"):
        return {"model": "openai/gpt-4o-mini", "input": {"messages": prompt}}
    if path.endswith("/models"):
        return None
    if path.endswith("/chat/completions"):
        return {"model": "openai/gpt-4o-mini", "messages": prompt}
    # The Universal endpoint: one step.
    step = {"model": "gpt-4o-mini", "messages": prompt}
    return [{"provider": "openai", "endpoint": "chat/completions", "headers": {}, "query": step}]


def _qualified(path: str, provider: str, world: World) -> str:
    model = world.models.get(provider, "claude-sonnet-4-6")
    return model if path.startswith("/v1/") else f"{provider}/{model}"


def key_header(path: str) -> str:
    """The header the provider's SDK puts its api_key in (a tollgate token is accepted there)."""
    slug = provider_of(path)
    wire = PROVIDERS[slug].wire if slug else "openai"
    return {"anthropic": "x-api-key", "google": "x-goog-api-key"}.get(wire, "authorization")


def key_value(header: str, key: str) -> str:
    return f"Bearer {key}" if header == "authorization" else key


def dataplane_headers(path: str, world: World) -> dict[str, str]:
    headers = {"anthropic-version": "2023-06-01"}
    if path.startswith("/client/v4/"):
        headers["cf-aig-gateway-id"] = world.gateway_id
    return headers


# --- the dashboard -----------------------------------------------------------------------------


def dashboard_form(
    template: str,
    url: str,
    harvested: dict[str, dict[str, str]],
    overlay: dict[str, str],
    session: DashSession,
) -> dict[str, str]:
    """The form a browser would post to `url`: the fields of the victim's own page for that
    action (its current gateway version and the like), the overlay's values (so that the post
    would change something), and the posting session's own CSRF token and form id."""
    form = {**harvested.get(url, {}), **overlay}
    form["csrf_token"] = session.csrf or ""
    if "form_id" in form or template.endswith("/tokens"):
        form["form_id"] = session.form_id or ""
    return form


# --- what the caller must not see --------------------------------------------------------------


def leaks(response: httpx.Response, probe: Probe, world: World) -> list[str]:
    """Labels of the victim's data (and secrets) in the answer that the caller did not send."""
    seen = "\n".join([response.text, *(f"{k}: {v}" for k, v in response.headers.items())])
    sent = probe.sent()
    found = [
        label
        for label, value in {**world.markers, **world.secrets}.items()
        if value in seen and value not in sent
    ]
    if world.victim.account_id in seen and world.victim.account_id not in sent:
        found.append("account id")
    return found


def control_body(method: str, path: str, world: World) -> Any:
    """A body that would change the victim's state (or plant the attacker's), if accepted."""
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/gateways"): {**REQUIRED_GATEWAY_FIELDS, "id": "planted"},
        ("PUT", "/gateways/{id}"): {**REQUIRED_GATEWAY_FIELDS, "collect_logs": False},
        ("PATCH", "/logs/{id}"): {"feedback": -1, "score": 5, "metadata": {"planted": "yes"}},
        ("POST", "/provider_configs"): {
            "provider_slug": "openai",
            "secret": "sk-attacker-planted-0123456789",
            "alias": "planted",
        },
        ("PUT", "/provider_configs/{id}"): {"secret": "sk-attacker-rotated-0123456789"},
        ("POST", "/custom-providers"): {
            "name": "Planted",
            "slug": "planted",
            "base_url": f"{world.sim_url}/openai/v1",
            "enable": True,
        },
        ("PATCH", "/custom-providers/{id}"): {"enable": False, "name": "Renamed"},
        ("POST", "/billing/payment-method"): {
            "card_number": "4000000000000002",
            "exp_month": 1,
            "exp_year": 2040,
            "cvc": "999",
        },
        ("POST", "/billing/topup"): {"amount": 1000},
        ("POST", "/billing/topup/status"): {"payment_intent_id": world.payment_intent_id},
        ("POST", "/billing/topup/config"): {"amount": 1000, "threshold": 500},
        ("POST", "/billing/spending-limit"): {
            "amount": 100,
            "duration": "daily",
            "strategy": "fixed",
        },
        ("POST", "/admin/v1/accounts"): {"name": "planted"},
        ("POST", "/tokens"): {"name": "planted", "permissions": ["run", "read", "edit"]},
        ("POST", "/credits"): {"amount_cents": 100_000, "note": "planted"},
    }
    for (verb, suffix), body in bodies.items():
        if verb == method and path.endswith(suffix):
            return body
    return None


def forged_webhook(world: World) -> bytes:
    """A Stripe event settling the victim's top-up, unsigned."""
    event = (
        '{"id": "evt_forged", "type": "payment_intent.succeeded", "data": {"object": '
        f'{{"object": "payment_intent", "id": "{world.payment_intent_id}", "status": "succeeded", '
        '"amount": 100000, "metadata": {}}}}}'
    )
    return event.encode()


DASH = "/dashboard/{account_id}"
OWN_PROVIDER_KEY = "sk-attacker-own-provider-key-0123456789"
# Form values that would change the victim's settings if a post got through (over the fields of
# the victim's own page, see `dashboard_form`).
DASH_OVERLAY: dict[str, dict[str, str]] = {
    "/limit": {"amount": "55.00", "duration": "daily", "strategy": "fixed"},
    "/credits/payment-method": {
        "card_number": "4000000000000002",
        "exp_month": "1",
        "exp_year": "2040",
        "cvc": "999",
    },
    "/credits/auto-topup": {"action": "save", "threshold": "7.00", "auto_amount": "20.00"},
    "/credits/topup": {"amount": "25.00"},
    "/credits/topup/pay": {"amount_cents": "2500", "idempotency_key": "planted-payment"},
    "/gateways": {"id": "planted"},
    "/gateways/{gateway_id}": {"cache_ttl": "120"},
    "/gateways/{gateway_id}/delete": {"confirm": "delete"},
    "/gateways/{gateway_id}/spend-limits": {"enabled": "on"},
    "/gateways/{gateway_id}/spend-rules": {"rule_name": "planted", "rule_amount": "5.00"},
    "/gateways/{gateway_id}/spend-rules/remove": {"rule_id": "planted"},
    "/logs/{gateway_id}/{log_id}/feedback": {"action": "down"},
    "/tokens": {"name": "planted", "perm_run": "on", "perm_read": "on", "perm_edit": "on"},
}


@dataclass
class Callers:
    """Everything the kinds of caller hold."""

    world: World
    victim_session: DashSession  # the victim's own, every permission
    attacker_session: DashSession
    read_only_session: DashSession
    refused_session: DashSession  # a token without `read`: sign-in refused
    harvested: dict[str, dict[str, str]]  # the victim's pages' forms, by action


# --- the probes of one cell ---------------------------------------------------------------------


def probes(endpoint: Endpoint, access: Access, kind: str, callers: Callers) -> list[Probe]:
    world = callers.world
    owner = world.attacker.account_id if kind == "foreign" else world.victim.account_id
    path = fill(endpoint.path, owner, world)
    method = endpoint.method
    if access in RUN:
        return _dataplane_probes(endpoint.path, path, method, kind, world)
    if access in (*DASHBOARD, Access.DASH_PUBLIC):
        return [_dashboard_probe(endpoint.path, path, method, access, kind, callers)]
    token = {
        "other": world.attacker.token(),
        "foreign": world.attacker.token(),
        "lacking": _lacking_token(access, world),
        "anonymous": None,
    }[kind]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if access == Access.SCRAPE:
        headers["x-forwarded-for"] = "203.0.113.9"  # not the loopback client it would trust
    if access == Access.STRIPE:
        headers["stripe-signature"] = "t=1,v1=forged"
        return [Probe(method, path, headers, content=forged_webhook(world))]
    return [Probe(method, path, headers, json=control_body(method, endpoint.path, world))]


def _lacking_token(access: Access, world: World) -> str:
    if access == Access.READ:
        return world.victim.without("read")
    if access == Access.EDIT:
        return world.victim.without("edit")
    return world.victim.token()  # the operator's endpoints: the victim's own full API token


def _dataplane_probes(
    template: str, path: str, method: str, kind: str, world: World
) -> list[Probe]:
    body = dataplane_body(template, world)
    base = dataplane_headers(path, world)
    header = key_header(template)

    def probe(via: str, extra: dict[str, str]) -> Probe:
        return Probe(method, path, {**base, **extra}, json=body, via=via)

    if kind == "other":
        token = world.attacker.token()
        return [
            probe("cf-aig-authorization", {"cf-aig-authorization": f"Bearer {token}"}),
            probe(header, {header: key_value(header, token)}),
        ]
    if kind == "lacking":
        token = world.victim.without("run")
        return [probe("cf-aig-authorization", {"cf-aig-authorization": f"Bearer {token}"})]
    return [
        probe("nothing", {}),
        probe(f"own provider key in {header}", {header: key_value(header, OWN_PROVIDER_KEY)}),
    ]


def _dashboard_probe(
    template: str, path: str, method: str, access: Access, kind: str, callers: Callers
) -> Probe:
    session = {
        "other": callers.attacker_session,
        "foreign": callers.attacker_session,
        "anonymous": DashSession(None),
        # Pages and the public routes: a token without `read` (it cannot sign in); forms: the
        # victim's read-only session.
        "lacking": callers.read_only_session
        if access == Access.DASH_EDIT
        else callers.refused_session,
    }[kind]
    if method == "GET":
        return Probe(method, path, session.headers())
    page = template.removeprefix(DASH)
    victim_url = fill(template, callers.world.victim.account_id, callers.world)
    form = dashboard_form(
        template, victim_url, callers.harvested, DASH_OVERLAY.get(page, {}), session
    )
    if access == Access.DASH_PUBLIC:  # sign-in, sign-out: the caller's own session only
        form = {}
    return Probe(method, path, session.headers(), form=form)
