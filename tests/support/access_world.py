"""The two accounts of the access matrix (tests/e2e/test_access_matrix.py), built through the
gateway's own APIs: a victim with one of everything an account can own, and an attacker.

The victim has tokens with every permission set, a gateway (with a stored provider key), request
logs with bodies, a custom provider, credits from a grant and a top-up, usage, a spending limit,
a saved card and auto top-up. Distinctive values (`World.markers`) let a test recognise any of
the victim's data in a response; `World.secrets` are values that no response may ever show.

The attacker owns a gateway with the victim's gateway's id (ids are per account), so a request
naming the victim's objects under the attacker's own account exercises the store's account
scoping, not just an unknown gateway.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS

FULL = frozenset({"run", "read", "edit"})
READ_ONLY = frozenset({"read"})
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SESSION_COOKIE = "tollgate_session"


@dataclass(frozen=True)
class Token:
    id: str
    secret: str


@dataclass
class Party:
    account_id: str
    tokens: dict[frozenset[str], Token] = field(default_factory=dict)

    def token(self, permissions: frozenset[str] = FULL) -> str:
        return self.tokens[permissions].secret

    def without(self, permission: str) -> str:
        """The account's token holding every permission but `permission`."""
        return self.token(FULL - {permission})


@dataclass
class DashSession:
    """A browser's dashboard session: its cookie, its CSRF token, and a create form's one-time
    id (the tokens page), where the session could get them."""

    cookie: str | None
    csrf: str | None = None
    form_id: str | None = None

    def headers(self) -> dict[str, str]:
        return {"cookie": f"{SESSION_COOKIE}={self.cookie}"} if self.cookie else {}


@dataclass
class World:
    """The victim, the attacker, and the ids and values the matrix probes with."""

    sim_url: str
    victim: Party
    attacker: Party
    gateway_id: str = ""  # the victim's gateway; the attacker has one with the same id
    log_id: str = ""
    custom_provider_id: str = ""
    custom_slug: str = ""
    config_id: str = ""
    topup_id: str = ""
    payment_intent_id: str = ""
    markers: dict[str, str] = field(default_factory=dict)  # label -> the victim's data
    secrets: dict[str, str] = field(default_factory=dict)  # label -> never in any response
    models: dict[str, str] = field(default_factory=dict)  # provider slug -> a priced model


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json()


def _api(account_id: str) -> str:
    return f"/client/v4/accounts/{account_id}/ai-gateway"


def build_world(
    client: httpx.Client, attacker_account: str, attacker_token: str, sim_url: str
) -> World:
    """Create the victim and its objects, and the attacker's mirror gateway, through the APIs."""
    tag = secrets.token_hex(5)
    markers = {
        "account name": f"victim-name-{tag}",
        "token name": f"victim-token-{tag}",
        "grant note": f"victim-grant-note-{tag}",
        "grant reference": f"victim-grant-ref-{tag}",
        "prompt": f"victim-prompt-{tag}",
        "custom provider name": f"Victim Provider {tag}",
        "custom provider description": f"victim-cp-description-{tag}",
        "custom provider header": f"sk-victim-custom-{tag}",  # shown to the account's readers
        "stored key alias": f"valias{tag}",
    }
    victim = _new_account(client, markers)
    world = World(sim_url=sim_url, victim=victim, attacker=Party(attacker_account))
    world.attacker.tokens[FULL] = Token("", attacker_token)
    world.secrets["stored key"] = f"sk-ant-victim-stored-key-{tag}"
    world.markers = markers
    _gateway_and_providers(client, world, tag)
    _usage_and_logs(client, world)
    _billing(client, world)
    for permissions, token in victim.tokens.items():
        markers[f"token id {'/'.join(sorted(permissions))}"] = token.id
        world.secrets[f"token {'/'.join(sorted(permissions))}"] = token.secret
    mirror = {**REQUIRED_GATEWAY_FIELDS, "id": world.gateway_id}
    attacker_auth = {"authorization": f"Bearer {attacker_token}"}
    _ok(client.post(f"{_api(attacker_account)}/gateways", headers=attacker_auth, json=mirror))
    world.models = _priced_models(client, attacker_account, attacker_auth)
    return world


def _new_account(client: httpx.Client, markers: dict[str, str]) -> Party:
    """The account, a token for every permission set, and a grant of credits."""
    body = {"name": markers["account name"]}
    party = Party(_ok(client.post("/admin/v1/accounts", headers=ADMIN, json=body), 201)["id"])
    for permissions in [FULL, READ_ONLY, *(FULL - {p} for p in sorted(FULL))]:
        token: dict[str, object] = {
            "name": f"{markers['token name']}-{'-'.join(sorted(permissions))}",
            "permissions": sorted(permissions),
        }
        url = f"/admin/v1/accounts/{party.account_id}/tokens"
        made = _ok(client.post(url, headers=ADMIN, json=token), 201)
        party.tokens[permissions] = Token(made["id"], made["token"])
    grant = {
        "amount_cents": 123_456_789,
        "note": markers["grant note"],
        "reference": markers["grant reference"],
    }
    url = f"/admin/v1/accounts/{party.account_id}/credits"
    _ok(client.post(url, headers=ADMIN, json=grant), 201)
    return party


def _gateway_and_providers(client: httpx.Client, world: World, tag: str) -> None:
    """A gateway with a stored provider key, and a custom provider."""
    api, auth, markers = _api(world.victim.account_id), _auth(world), world.markers
    world.gateway_id = f"vgw-{tag}"
    gateway = {
        **REQUIRED_GATEWAY_FIELDS,
        "id": world.gateway_id,
        "authentication": True,
        "log_management": 8_765_432,
    }
    _ok(client.post(f"{api}/gateways", headers=auth, json=gateway))
    stored = {
        "provider_slug": "anthropic",
        "secret": world.secrets["stored key"],
        "alias": markers["stored key alias"],
    }
    url = f"{api}/gateways/{world.gateway_id}/provider_configs"
    config = _ok(client.post(url, headers=auth, json=stored))["result"]
    world.config_id = markers["stored key id"] = config["id"]
    markers["stored key preview"] = config["secret_preview"]
    custom = {
        "name": markers["custom provider name"],
        "slug": f"vcp-{tag}",
        "base_url": f"{world.sim_url}/openai/v1",
        "enable": True,
        "description": markers["custom provider description"],
        "headers": json.dumps({"authorization": f"Bearer {markers['custom provider header']}"}),
    }
    made = _ok(client.post(f"{api}/custom-providers", headers=auth, json=custom))["result"]
    world.custom_provider_id = markers["custom provider id"] = made["id"]
    world.custom_slug = markers["custom provider slug"] = made["slug"]


def _usage_and_logs(client: httpx.Client, world: World) -> None:
    """Billed requests whose logs keep the prompt marker, on the gateway and on `default`."""
    prompt = [{"role": "user", "content": world.markers["prompt"]}]
    run = {"cf-aig-authorization": f"Bearer {world.victim.token()}"}
    for gateway_id in (world.gateway_id, "default"):
        url = f"/v1/{world.victim.account_id}/{gateway_id}/openai/chat/completions"
        _ok(client.post(url, headers=run, json={"model": "gpt-4o-mini", "messages": prompt}))
    # Both logs in the database before anything is compared (the writer is asynchronous).
    api = _api(world.victim.account_id)
    world.log_id, _ = (
        _wait_for_log(client, api, gateway_id, _auth(world))
        for gateway_id in (world.gateway_id, "default")
    )
    world.markers["log id"] = world.log_id


def _billing(client: httpx.Client, world: World) -> None:
    """A spending limit, a saved card, a top-up and auto top-up; then the balance."""
    api, auth, markers = _api(world.victim.account_id), _auth(world), world.markers
    limit = {"amount": 987_654_321, "duration": "weekly", "strategy": "sliding"}
    _ok(client.post(f"{api}/billing/spending-limit", headers=auth, json=limit))
    card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2039, "cvc": "123"}
    _ok(client.post(f"{api}/billing/payment-method", headers=auth, json=card))
    topup = _ok(client.post(f"{api}/billing/topup", headers=auth, json={"amount": 4321}))
    world.payment_intent_id = markers["payment intent"] = topup["result"]["payment_intent_id"]
    auto = {"amount": 2345, "threshold": 678, "monthly_cap": 98_765}
    _ok(client.post(f"{api}/billing/topup/config", headers=auth, json=auto))
    invoices = _ok(client.get(f"{api}/billing/invoice-history", headers=auth))["result"]
    world.topup_id = markers["top-up id"] = invoices["invoices"][0]["id"].removeprefix("topup_")
    account = _ok(client.get(f"/admin/v1/accounts/{world.victim.account_id}", headers=ADMIN))
    markers["balance"] = str(account["balance_nanos"])
    markers["balance in dollars"] = account["balance"]


def _auth(world: World) -> dict[str, str]:
    return {"authorization": f"Bearer {world.victim.token()}"}


def _wait_for_log(client: httpx.Client, api: str, gateway_id: str, auth: dict[str, str]) -> str:
    """The gateway's log id, once the background writer has stored it (a moment after the
    response, `logs.flush_interval_ms`)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = _ok(client.get(f"{api}/gateways/{gateway_id}/logs", headers=auth))["result"]
        if listed:
            return str(listed[0]["id"])
        time.sleep(0.05)
    raise AssertionError("the victim's request log was never written")


def _priced_models(client: httpx.Client, account_id: str, auth: dict[str, str]) -> dict[str, str]:
    """One catalog model per provider (so a request that got through would really be billed)."""
    url = f"/client/v4/accounts/{account_id}/ai/models/search"
    catalog = _ok(client.get(url, headers=auth, params={"per_page": 1000}))["result"]
    models: dict[str, str] = {}
    for model in catalog:
        name = str(model["id"]).removeprefix(f"{model['provider']}/")
        if "embed" not in name:
            models.setdefault(model["provider"], name)
    return models


# --- the dashboard ---------------------------------------------------------------------------


class _Forms(HTMLParser):
    """The POST forms of a page: action -> the fields a browser would submit as they stand
    (hidden and text inputs, checked boxes, each select's chosen option)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, str]] = {}
        self._fields: dict[str, str] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("method", "get").lower() == "post":
            action = a.get("action", "").split("#")[0]
            self._fields = self.forms.setdefault(action, {})
        elif self._fields is None or not a.get("name"):
            return
        elif tag == "input" and a.get("type") in ("checkbox", "radio"):
            if "checked" in a:
                self._fields.setdefault(a["name"], a.get("value") or "on")
        elif tag == "input" and a.get("type") not in ("submit", "button") or tag == "button":
            self._fields.setdefault(a["name"], a.get("value", ""))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select is not None:
            if "selected" in a or self._select not in self._fields:
                self._fields[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._fields.setdefault(a["name"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._fields = None
        elif tag == "select":
            self._select = None


def page_forms(html: str) -> dict[str, dict[str, str]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def _hidden(html: str, name: str) -> str | None:
    for fields in page_forms(html).values():
        if name in fields:
            return fields[name]
    return None


def _sign_in_attempt(client: httpx.Client, token: str) -> tuple[httpx.Response, str]:
    """Post the sign-in form with `token`; (the answer, the cookie the browser then holds)."""
    page = client.get("/dashboard/sign-in")
    anonymous = page.cookies[SESSION_COOKIE]
    answer = client.post(
        "/dashboard/sign-in",
        headers={"cookie": f"{SESSION_COOKIE}={anonymous}"},
        data={"csrf_token": _hidden(page.text, "csrf_token") or "", "token": token},
    )
    return answer, answer.cookies.get(SESSION_COOKIE) or anonymous


def dashboard_session(client: httpx.Client, token: str, account_id: str) -> DashSession:
    """A signed-in session, with its CSRF token and (with `edit`) a tokens-page form id."""
    answer, cookie = _sign_in_attempt(client, token)
    assert answer.status_code == 303, answer.text
    session = DashSession(cookie)
    tokens_page = client.get(f"/dashboard/{account_id}/tokens", headers=session.headers())
    assert tokens_page.status_code == 200, tokens_page.text
    session.csrf = _hidden(tokens_page.text, "csrf_token")
    session.form_id = _hidden(tokens_page.text, "form_id")
    return session


def refused_session(client: httpx.Client, token: str) -> DashSession:
    """What a browser holds after the dashboard refused to sign `token` in (403): the
    anonymous sign-in session, with its CSRF token."""
    answer, cookie = _sign_in_attempt(client, token)
    assert answer.status_code == 403, answer.text
    return DashSession(cookie, _hidden(answer.text, "csrf_token"))
