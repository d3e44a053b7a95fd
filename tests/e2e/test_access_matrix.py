"""The access matrix (issue 9, Security): every endpoint tollgate serves, called by someone who
may not use it, on the victim's real objects. No answer may carry the victim's data, no request
may change anything, and each refusal is the documented one (docs/api/README.md
"Authentication", docs/api/admin.md, docs/api/operations.md, docs/dashboard.md), in the error
format of the endpoint called.

The endpoints come from the app (`tests.support.access_endpoints`): its route tables and the
tables the data plane dispatches on. Each must be classified below: a new endpoint makes this
test fail until someone decides who may call it.

The callers (one cell per endpoint and caller):
- `other`: a token of another account, with every permission (on the data plane also in the
  header the provider's SDK uses); on the dashboard, that account's session and its CSRF token.
- `lacking`: a token of the victim's own account with every permission but the one the endpoint
  needs; for the operator's endpoints the victim's full API token (an API token is not an
  operator token); on the dashboard a read-only session posting forms, and, for pages, a token
  without `read`, which cannot sign in.
- `anonymous`: no token, no session (on the data plane also: only a provider key of one's own).
- `foreign`: the attacker's own account in the URL, with the victim's object ids (log, token,
  top-up, custom provider, stored key, payment); the attacker also owns a gateway with the
  victim's gateway id, so only account scoping stands in the way.

After the whole matrix every row of the database is byte-identical, the simulator (every
upstream provider) was never called, no log was written, nothing was billed, and the victim's
own token and dashboard session still work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.support.access_endpoints import Endpoint, all_endpoints, openapi_operations
from tests.support.access_probes import OWN_PROVIDER_KEY, Callers, fill, leaks, probes
from tests.support.access_rules import API, Access, check_refusal, kinds
from tests.support.access_world import (
    ADMIN,
    READ_ONLY,
    World,
    build_world,
    dashboard_session,
    page_forms,
    refused_session,
)
from tests.support.db_snapshot import as_bytes, database_snapshot, describe_change
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.prometheus import parse
from tollgate.app import create_app
from tollgate.settings import Settings

R, E = Access.READ, Access.EDIT
AG = "/client/v4/accounts/{account_id}/ai-gateway"
GW = AG + "/gateways/{gateway_id}"
BILL = AG + "/billing"
ADM = "/admin/v1/accounts"
DASH = "/dashboard/{account_id}"
V1 = "/v1/{account_id}/{gateway_id}"
REST = "/client/v4/accounts/{account_id}/ai"

CLASSIFIED: dict[tuple[str, str], Access] = {
    # Gateways (docs/api/management.md)
    ("GET", AG + "/gateways"): R,
    ("POST", AG + "/gateways"): E,
    ("GET", AG + "/gateways/{id}"): R,
    ("PUT", AG + "/gateways/{id}"): E,
    ("DELETE", AG + "/gateways/{id}"): E,
    ("GET", GW + "/url/{provider}"): R,
    # Stored keys
    ("GET", GW + "/provider_configs"): R,
    ("POST", GW + "/provider_configs"): E,
    ("GET", GW + "/provider_configs/{id}"): R,
    ("PUT", GW + "/provider_configs/{id}"): E,
    ("DELETE", GW + "/provider_configs/{id}"): E,
    # Custom providers
    ("GET", AG + "/custom-providers"): R,
    ("POST", AG + "/custom-providers"): E,
    ("GET", AG + "/custom-providers/{id}"): R,
    ("PATCH", AG + "/custom-providers/{id}"): E,
    ("DELETE", AG + "/custom-providers/{id}"): E,
    # Logs (docs/api/logs.md)
    ("GET", GW + "/logs"): R,
    ("DELETE", GW + "/logs"): E,
    ("GET", GW + "/logs/{id}"): R,
    ("PATCH", GW + "/logs/{id}"): E,
    ("GET", GW + "/logs/{id}/request"): R,
    ("GET", GW + "/logs/{id}/response"): R,
    # Billing (docs/api/billing.md)
    ("GET", BILL + "/credit-balance"): R,
    ("POST", BILL + "/payment-method"): E,
    ("DELETE", BILL + "/payment-method"): E,
    ("POST", BILL + "/topup"): E,
    ("POST", BILL + "/topup/status"): R,
    ("GET", BILL + "/topup/limits"): R,
    ("GET", BILL + "/topup/config"): R,
    ("POST", BILL + "/topup/config"): E,
    ("DELETE", BILL + "/topup/config"): E,
    ("GET", BILL + "/spending-limit"): R,
    ("POST", BILL + "/spending-limit"): E,
    ("DELETE", BILL + "/spending-limit"): E,
    ("GET", BILL + "/usage-history"): R,
    ("GET", BILL + "/invoice-history"): R,
    ("GET", BILL + "/invoice-preview"): R,
    ("GET", "/client/v4/accounts/{account_id}/ai/models/search"): R,
    ("POST", "/stripe/webhook"): Access.STRIPE,
    # The operator (docs/api/admin.md, docs/api/operations.md)
    ("GET", ADM): Access.ADMIN,
    ("POST", ADM): Access.ADMIN,
    ("GET", ADM + "/{account_id}"): Access.ADMIN,
    ("POST", ADM + "/{account_id}/disable"): Access.ADMIN,
    ("POST", ADM + "/{account_id}/enable"): Access.ADMIN,
    ("GET", ADM + "/{account_id}/tokens"): Access.ADMIN,
    ("POST", ADM + "/{account_id}/tokens"): Access.ADMIN,
    ("POST", ADM + "/{account_id}/tokens/{token_id}/revoke"): Access.ADMIN,
    ("DELETE", ADM + "/{account_id}/tokens/{token_id}"): Access.ADMIN,
    ("POST", ADM + "/{account_id}/credits"): Access.ADMIN,
    ("GET", ADM + "/{account_id}/ledger"): Access.ADMIN,
    ("GET", "/metrics"): Access.SCRAPE,
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/readyz"): Access.PUBLIC,
    ("GET", "/openapi.json"): Access.PUBLIC,
    # The data plane (docs/api/native.md, unified.md, universal.md)
    **{
        ("POST", f"{V1}/{slug}/{{path}}"): Access.RUN_OPENAI
        for slug in (
            "openai",
            "groq",
            "grok",
            "mistral",
            "deepseek",
            "cerebras",
            "perplexity-ai",
            "openrouter",
            "workers-ai",
            "custom-{slug}",
        )
    },
    ("POST", V1 + "/anthropic/{path}"): Access.RUN_ANTHROPIC,
    ("POST", V1 + "/google-ai-studio/{path}"): Access.RUN_GOOGLE,
    ("POST", V1 + "/compat/chat/completions"): Access.RUN_OPENAI,
    ("POST", V1 + "/compat/embeddings"): Access.RUN_OPENAI,
    ("GET", V1 + "/compat/models"): Access.RUN_OPENAI,
    ("POST", V1): Access.RUN_OPENAI,
    ("POST", REST + "/v1/chat/completions"): Access.RUN_OPENAI,
    ("POST", REST + "/v1/messages"): Access.RUN_ANTHROPIC,
    ("POST", REST + "/v1/responses"): Access.RUN_OPENAI,
    ("POST", REST + "/run"): Access.RUN_OPENAI,
    # The dashboard (docs/dashboard.md)
    ("GET", "/dashboard"): Access.DASH_PUBLIC,
    ("GET", "/dashboard/"): Access.DASH_PUBLIC,
    ("GET", "/dashboard/sign-in"): Access.DASH_PUBLIC,
    ("POST", "/dashboard/sign-in"): Access.DASH_PUBLIC,
    ("POST", "/dashboard/sign-out"): Access.DASH_PUBLIC,
    ("GET", "/dashboard/static/{path}"): Access.DASH_PUBLIC,
    ("GET", "/dash{rest}"): Access.DASH_PUBLIC,
    **{
        ("GET", DASH + page): Access.DASH_READ
        for page in (
            "",
            "/credits",
            "/credits/topups/{topup_id}",
            "/gateways",
            "/gateways/{gateway_id}",
            "/gateways/{gateway_id}/delete",
            "/limit",
            "/logs",
            "/logs/{gateway_id}/{log_id}",
            "/tokens",
            "/tokens/{token_id}/revoke",
            "/usage",
        )
    },
    **{
        ("POST", DASH + page): Access.DASH_EDIT
        for page in (
            "/credits/auto-topup",
            "/credits/payment-method",
            "/credits/topup",
            "/credits/topup/pay",
            "/gateways",
            "/gateways/{gateway_id}",
            "/gateways/{gateway_id}/delete",
            "/gateways/{gateway_id}/spend-limits",
            "/gateways/{gateway_id}/spend-rules",
            "/gateways/{gateway_id}/spend-rules/remove",
            "/limit",
            "/logs/{gateway_id}/{log_id}/feedback",
            "/tokens",
            "/tokens/{token_id}/revoke",
        )
    },
}

MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
ENV = {
    "TOLLGATE_OPERATOR__MASTER_KEY": MASTER_KEY,  # stored provider keys
    "TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP": "true",  # a custom provider on the simulator
    "TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    "TOLLGATE_LOGS__FLUSH_INTERVAL_MS": "20",
}


def classified_endpoints(settings: Settings) -> list[Endpoint]:
    """Every endpoint of an app built with `settings` (not started: the route tables are built
    with the app), each classified; else the test fails naming the newcomers."""
    endpoints = all_endpoints(create_app(settings))
    unclassified = [f"{e.method} {e.path}" for e in endpoints if e.key not in CLASSIFIED]
    assert not unclassified, f"unclassified endpoint(s), add them to CLASSIFIED: {unclassified}"
    stale = set(CLASSIFIED) - {e.key for e in endpoints}
    assert not stale, f"classified endpoints the app does not serve: {sorted(stale)}"
    return endpoints


def test_every_endpoint_is_classified(make_settings: Callable[..., Settings]) -> None:
    assert len(classified_endpoints(make_settings(ENV))) == len(CLASSIFIED)


@pytest.mark.timeout(300)
def test_access_matrix(
    database_url: str,
    start_gateway: Callable[..., AbstractContextManager[Gateway]],
    make_settings: Callable[..., Settings],
    sim: Sim,
) -> None:
    endpoints = classified_endpoints(make_settings(ENV))
    # Each probe carries exactly the cookie its caller holds: the client keeps none of its own.
    no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    with (
        start_gateway(database_url, **ENV) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30, cookies=no_cookies) as client,
    ):
        schema = client.get("/openapi.json").json()
        assert openapi_operations(schema) <= {e.key for e in endpoints}
        callers = _callers(client, gateway, sim)
        _victim_reads_its_own_objects(client, endpoints, callers)

        _settle(client, callers.world)
        before, metrics_before = _snapshot_without_leases(gateway.database_url), _metrics(client)
        sim.clear()
        started = time.monotonic()
        cells, requests, failures = _run_matrix(client, endpoints, callers)
        elapsed = time.monotonic() - started
        _settle(client, callers.world)
        after, metrics_after = database_snapshot(gateway.database_url), _metrics(client)

        print(
            f"\naccess matrix on {database_url.split(':')[0]}: {len(endpoints)} endpoints, "
            f"{cells} cells, {requests} requests in {elapsed:.1f} s, {len(failures)} failures"
        )
        if as_bytes(after) != as_bytes(before):
            failures.append("CHANGED the database:\n" + describe_change(before, after))
        if upstream := sim.requests():
            failures.append(f"{len(upstream)} refused request(s) reached a provider")
        for counter in ("tollgate_billed_nanos_total", "tollgate_logs_written_total"):
            if metrics_after.total(counter) != metrics_before.total(counter):
                failures.append(f"{counter} moved during the matrix")
        assert not failures, "\n".join(failures)
        _victim_still_works(client, callers)


def _run_matrix(
    client: httpx.Client, endpoints: list[Endpoint], callers: Callers
) -> tuple[int, int, list[str]]:
    """Every cell: (cells, requests sent, what went wrong)."""
    cells, requests, failures = 0, 0, []
    for endpoint in endpoints:
        access = CLASSIFIED[endpoint.key]
        for kind in kinds(endpoint, access):
            cells += 1
            for probe in probes(endpoint, access, kind, callers):
                requests += 1
                response = probe.send(client)
                where = (
                    f"{endpoint.method} {probe.path} [{', '.join(filter(None, (kind, probe.via)))}]"
                )
                if problem := check_refusal(access, kind, response):
                    failures.append(f"{where}: {problem}")
                if found := leaks(response, probe, callers.world):
                    failures.append(f"{where}: LEAK of the victim's {', '.join(found)}")
    return cells, requests, failures


def _callers(client: httpx.Client, gateway: Gateway, sim: Sim) -> Callers:
    world = build_world(client, gateway.account.account_id, gateway.account.token, sim.url)
    victim = world.victim
    return Callers(
        world=world,
        victim_session=dashboard_session(client, victim.token(), victim.account_id),
        attacker_session=dashboard_session(
            client, world.attacker.token(), world.attacker.account_id
        ),
        read_only_session=dashboard_session(client, victim.token(READ_ONLY), victim.account_id),
        refused_session=refused_session(client, victim.without("read")),
        harvested={},  # filled from the victim's own pages
    )


def _victim_reads_its_own_objects(
    client: httpx.Client, endpoints: list[Endpoint], callers: Callers
) -> None:
    """The probes name real objects: the victim itself reads every one of them (200), and the
    answers show every marker the leak check looks for. Keeps the forms of the victim's pages
    (`Callers.harvested`)."""
    world = callers.world
    shown: list[str] = []
    for endpoint in endpoints:
        access = CLASSIFIED[endpoint.key]
        if endpoint.method != "GET" or access not in (*API, Access.ADMIN, Access.DASH_READ):
            continue
        headers = {
            Access.ADMIN: ADMIN,
            Access.DASH_READ: callers.victim_session.headers(),
        }.get(access, {"authorization": f"Bearer {world.victim.token()}"})
        params = {"value_grouping_window": "day"} if "usage-history" in endpoint.path else None
        url = fill(endpoint.path, world.victim.account_id, world)
        answer = client.get(url, headers=headers, params=params)
        assert answer.status_code == 200, f"{url}: {answer.text[:300]}"
        shown.append(answer.text)
        if access == Access.DASH_READ:  # the forms a browser of the victim's would post
            callers.harvested.update(page_forms(answer.text))
    everything = "\n".join(shown)
    unseen = [label for label, value in world.markers.items() if value not in everything]
    assert not unseen, f"markers the victim's own reads never show: {unseen}"
    secrets_shown = [label for label, value in world.secrets.items() if value in everything]
    assert not secrets_shown, f"secrets shown even to the victim: {secrets_shown}"


def _settle(client: httpx.Client, world: World) -> None:
    """Wait until every settlement and log of the requests so far is in the database."""
    for account in (world.victim.account_id, world.attacker.account_id):
        ledger = client.get(f"/admin/v1/accounts/{account}/ledger", headers=ADMIN)
        assert ledger.status_code == 200, ledger.text
    deadline = time.monotonic() + 10
    while _metrics(client).total("tollgate_log_queue_depth") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # a batch taken off the queue is committed within a flush (20 ms here)


def _snapshot_without_leases(database_url: str) -> dict[str, list[str]]:
    """The database once the gateway has given back its idle credit leases (SQLite only: an
    account's lease is returned 2 s after its last request). Taken earlier, the snapshot holds a
    lease that is handed back during the matrix, which would read as a change the matrix made."""
    deadline = time.monotonic() + 10
    while (snapshot := database_snapshot(database_url)).get("credit_leases"):
        assert time.monotonic() < deadline, "a credit lease was not given back within 10 s"
        time.sleep(0.1)
    return snapshot


def _metrics(client: httpx.Client) -> Any:
    return parse(client.get("/metrics").text)


def _victim_still_works(client: httpx.Client, callers: Callers) -> None:
    world = callers.world
    own = client.get(
        fill(AG + "/gateways/{id}", world.victim.account_id, world),
        headers={"authorization": f"Bearer {world.victim.token()}"},
    )
    assert own.status_code == 200, own.text
    page = client.get(
        f"/dashboard/{world.victim.account_id}", headers=callers.victim_session.headers()
    )
    assert page.status_code == 200 and world.markers["account name"] in page.text


def test_compat_models_needs_a_token_unless_the_gateway_is_open(gateway: Gateway) -> None:
    """Regression: `GET compat/models` took a provider key alone as enough, on any gateway of
    any account; like every data-plane route it needs a token unless the gateway has
    authentication off."""
    account = gateway.account.account_id
    own_key = {"authorization": f"Bearer {OWN_PROVIDER_KEY}"}
    api = f"{gateway.url}/client/v4/accounts/{account}/ai-gateway/gateways"
    token = {"authorization": f"Bearer {gateway.account.token}"}
    for gateway_id, authentication in (("locked", True), ("open", False)):
        body = {**REQUIRED_GATEWAY_FIELDS, "id": gateway_id, "authentication": authentication}
        assert httpx.post(api, headers=token, json=body).status_code == 200
    for gateway_id in ("default", "locked", "no-such-gateway"):
        refused = httpx.get(f"{gateway.base('compat', gateway=gateway_id)}/models", headers=own_key)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "missing_token"
    opened = httpx.get(f"{gateway.base('compat', gateway='open')}/models", headers=own_key)
    assert opened.status_code == 200 and opened.json()["data"], opened.text
    listed = httpx.get(f"{gateway.base('compat', gateway='locked')}/models", headers=token)
    assert listed.status_code == 200 and listed.json()["data"], listed.text
