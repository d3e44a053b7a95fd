"""Secrets never appear in clear in the gateway's log, its answers, `/metrics`, its database or its
files: distinctive secrets are planted everywhere a secret can enter, every path is driven, and
everything the gateway left behind is searched for them (and for their base64 and hex forms).

Planted: the operator's provider keys (through `TOLLGATE_PROVIDERS__*`, a provider's own key
variable, the TOML file, and a `${VAR}` reference in it), the ZDR key, the admin token, the master
key, the Stripe secret key and webhook secret (the Stripe fake's), the PaymentIntents' client
secrets, the PostgreSQL password in the database URL (trust auth ignores it), account tokens (in
use, revoked, and a wrong one), a wrong admin token, stored provider keys (created, rotated, and
one refused), custom provider keys, and clients' own keys in every BYOK form (`Authorization`,
`x-api-key`, `x-goog-api-key`, `?key=`, the Unified API, Universal step headers).

Driven: `tollgate serve` (a subprocess at debug level: JSON log on SQLite; text log on PostgreSQL
with Redis) from start-up to a graceful shutdown; successful requests (managed, ZDR, stored,
BYOK, streamed, cached, Unified API, Universal, custom provider); upstream errors (401, 500);
gateway errors (wrong or revoked token, bad body, bad header, unknown alias); the admin,
management, stored keys, custom providers, billing (Stripe and its webhook) and logs APIs;
OpenTelemetry export; `/metrics`; and a start-up that fails on an unreachable database.

Scanned: the process's stdout and stderr, every response the clients received (headers and
bodies, the logs API's included), `/metrics`, every row of every table (and the SQLite file's
bytes), Redis's keys and values, the data directory's files, what the OTLP collector received.

Allowed by design: a new token in the response that issues it, and the credentials an account
gives its custom provider's `headers` and its gateway's `otel` exporters: Cloudflare's API stores
and echoes them, so they are in the database, in those APIs' answers, and sent to the collector.
The end of the test checks that the scan does see each kind of output it reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.cli.conftest import clean_env
from tests.e2e.conftest import Sim
from tests.support import fake_stripe
from tests.support.databases import fresh_postgres_database
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.secret_scan import (
    Allowed,
    Collector,
    Output,
    Planted,
    Recorder,
    Secrets,
    directory_outputs,
    failed_start_outputs,
    find_leaks,
    found_in,
    otlp_collector,
    postgres_outputs,
    redis_outputs,
    serve,
    sqlite_outputs,
    wait_for,
)
from tollgate.providers.registry import PROVIDERS

REDIS_URL = "redis://127.0.0.1:6379/0"
HI = [{"role": "user", "content": "hi"}]
GPT, CLAUDE, GEMINI, GROQ = (
    "gpt-4o-mini",
    "claude-sonnet-4-6",
    "gemini-2.0-flash",
    "groq/llama-3.3-70b-versatile",
)
GEMINI_BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


def operator_env(
    planted: Secrets, sim: Sim, tmp_path: Path, database_url: str, stripe_base: str
) -> dict[str, str]:
    """The environment of `tollgate serve`, every operator secret planted; writes tollgate.toml."""
    env = clean_env(tmp_path)
    for slug, row in PROVIDERS.items():
        name = slug.upper().replace("-", "_")
        env[f"TOLLGATE_PROVIDERS__{name}__BASE_URL"] = sim.url + row.sim_path
        key = planted.new(f"operator key for {slug}", f"sk-op-{slug}-")
        if slug == "openai":
            env[row.key_env] = key  # the provider's own variable, OPENAI_API_KEY
        elif slug == "google-ai-studio":
            env["SCAN_GEMINI_KEY"] = key  # referenced from tollgate.toml
        elif slug != "anthropic":  # anthropic's is written in tollgate.toml itself
            env[f"TOLLGATE_PROVIDERS__{name}__API_KEY"] = key
    anthropic_key = planted.by_name["operator key for anthropic"].value
    (tmp_path / "tollgate.toml").write_text(
        f'[providers.anthropic]\napi_key = "{anthropic_key}"\n'
        '[providers.google-ai-studio]\napi_key = "${SCAN_GEMINI_KEY}"\n'
    )
    master = os.urandom(32)
    master_text = base64.b64encode(master).decode()
    planted.add(Planted("master key", master_text, master_text.rstrip("="), (master,)))
    for name, value in [
        ("Stripe secret key", fake_stripe.API_KEY),
        ("Stripe webhook secret", fake_stripe.WEBHOOK_SECRET),
    ]:
        planted.add(Planted(name, value, value))
    return {
        **env,
        "TOLLGATE_DATABASE_URL": database_url,
        "TOLLGATE_PROVIDERS__OPENAI__ZDR_API_KEY": planted.new("ZDR key", "sk-zdr-"),
        "TOLLGATE_ADMIN_TOKEN": planted.new("admin token", "adm-"),
        "TOLLGATE_OPERATOR__MASTER_KEY": master_text,
        "TOLLGATE_BILLING__PAYMENT_PROVIDER": "stripe",
        "TOLLGATE_BILLING__STRIPE_SECRET_KEY": fake_stripe.API_KEY,
        "TOLLGATE_BILLING__STRIPE_WEBHOOK_SECRET": fake_stripe.WEBHOOK_SECRET,
        "TOLLGATE_BILLING__STRIPE_API_BASE": stripe_base,
        "TOLLGATE_LOG_LEVEL": "debug",
        "TOLLGATE_LOGS__FLUSH_INTERVAL_MS": "20",
        "TOLLGATE_OTEL__FLUSH_INTERVAL_MS": "20",
        # The simulator and the collector listen on loopback, over http.
        "TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP": "true",
        "TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
    }


# --- the paths --------------------------------------------------------------------------------


@dataclass
class Driver:
    """Drives every path of a running gateway through recording clients."""

    url: str
    planted: Secrets
    recorder: Recorder
    http: httpx.Client
    sim: Sim
    account_id: str = ""
    token: str = ""
    last_logs: dict[str, str] = field(default_factory=dict)  # gateway -> its last request's log

    def admin(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        token = token or self.planted.by_name["admin token"].value
        headers = {"authorization": f"Bearer {token}"}
        return self.http.request(method, f"{self.url}/admin/v1{path}", headers=headers, **kw).json()

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = f"{self.url}/client/v4/accounts/{self.account_id}/ai-gateway{path}"
        return self.http.request(
            method, url, headers={"authorization": f"Bearer {self.token}"}, **kw
        )

    def base(self, gateway: str, provider: str) -> str:
        return f"{self.url}/v1/{self.account_id}/{gateway}/{provider}"

    def byok(self, api_key: str | None) -> dict[str, str]:
        """With the client's own key, the tollgate token goes in cf-aig-authorization."""
        return {"cf-aig-authorization": f"Bearer {self.token}"} if api_key else {}

    def openai(self, gateway: str, api_key: str | None = None, provider: str = "openai") -> Any:
        return openai.OpenAI(
            api_key=api_key or self.token,
            base_url=self.base(gateway, provider),
            default_headers=self.byok(api_key),
            max_retries=0,
            http_client=self.recorder.client(),
        ).chat.completions

    def anthropic(self, gateway: str, api_key: str | None = None, byok: bool = True) -> Any:
        return anthropic.Anthropic(
            api_key=api_key or self.token,
            base_url=self.base(gateway, "anthropic"),
            default_headers=self.byok(api_key) if byok else {},
            max_retries=0,
            http_client=self.recorder.client2(),  # the anthropic SDK is built on httpx2
        ).messages

    def accounts_and_tokens(self) -> None:
        self.account_id = self.admin("POST", "/accounts", json={"name": "scanned"})["id"]
        tokens = f"/accounts/{self.account_id}/tokens"
        every = {"permissions": ["run", "read", "edit"]}
        issued = self.admin("POST", tokens, json={"name": "main", **every})
        self.token = self.planted.token("account token", issued)
        doomed = self.admin("POST", tokens, json={"name": "doomed", **every})
        revoked = self.planted.token("revoked token", doomed)
        self.admin("GET", tokens)
        self.admin("POST", f"{tokens}/{doomed['id']}/revoke")
        self.admin("POST", f"/accounts/{self.account_id}/credits", json={"amount_cents": 10_000})
        self.admin("GET", "/accounts", token=self.planted.new("wrong admin token", "adm-"))
        wrong = self.planted.new("wrong token", "tg_feedfacefeedface")
        gemini = f"{self.base('main', 'google-ai-studio')}/v1beta/models/{GEMINI}:generateContent"
        for token in (revoked, wrong):  # refused with 401, each way a token is sent
            bearer = {"authorization": f"Bearer {token}"}
            chat = f"{self.base('main', 'openai')}/chat/completions"
            self.http.post(chat, headers=bearer, json={"model": GPT, "messages": HI})
            self.http.post(gemini, params={"key": token}, json=GEMINI_BODY)
            with pytest.raises(anthropic.AuthenticationError):  # as x-api-key
                self.anthropic("main", token, byok=False).create(
                    model=CLAUDE, max_tokens=20, messages=HI
                )
            self.http.get(f"{self.url}/client/v4/accounts/{self.account_id}/ai-gateway/gateways",
                          headers=bearer)  # fmt: skip

    def gateways(self, collector: Collector) -> None:
        exporter = {
            "url": collector.url,
            "authorization": f"Bearer {self.planted.new('otel authorization', 'otel-')}",
            "headers": {"x-otel-key": self.planted.new("otel header", "otelh-")},
        }
        limited = {"rate_limiting_limit": 1000, "rate_limiting_interval": 60}  # kept in Redis
        for gateway, extra in [("main", limited), ("keys", {}), ("traced", {"otel": [exporter]})]:
            body = {"id": gateway, **REQUIRED_GATEWAY_FIELDS, **extra}
            created = self.api("POST", "/gateways", json=body)
            assert created.status_code == 200, created.text
        self.api("GET", "/gateways")
        self.api("GET", "/gateways/traced")

    def managed_requests(self) -> None:
        chat = self.openai("main")
        chat.create(model=GPT, messages=HI)
        chat.create(model=GPT, messages=HI, extra_headers={"cf-aig-zdr": "true"})
        list(chat.create(model=GPT, messages=HI, stream=True))
        self.anthropic("main").create(model=CLAUDE, max_tokens=20, messages=HI)
        gemini = f"{self.base('main', 'google-ai-studio')}/v1beta/models/{GEMINI}:generateContent"
        self.http.post(gemini, headers={"x-goog-api-key": self.token}, json=GEMINI_BODY)
        self.openai("main", provider="compat").create(model=GROQ, messages=HI)
        with pytest.raises(openai.InternalServerError):  # the upstream's 500, on a managed key
            chat.create(model=GPT, messages=HI, extra_headers={"x-sim-error": "500"})

    def byok_requests(self) -> None:
        chat = self.openai("main", api_key=self.planted.new("BYOK openai key", "sk-byok-"))
        chat.create(model=GPT, messages=HI)
        list(chat.create(model=GPT, messages=HI, stream=True))
        for _ in range(2):  # a miss, then a hit: the cache's key holds the key's hash
            chat.create(model=GPT, messages=HI, extra_headers={"cf-aig-cache-ttl": "60"})
        with pytest.raises(openai.AuthenticationError):  # the upstream's 401 for this key
            chat.create(model=GPT, messages=HI, extra_headers={"x-sim-error": "401"})
        with pytest.raises(openai.BadRequestError):  # the gateway's 400: a bad cf-aig-* value
            chat.create(model=GPT, messages=HI, extra_headers={"cf-aig-cache-ttl": "soon"})
        own_claude = self.planted.new("BYOK anthropic key", "sk-ant-byok-")
        claude = self.anthropic("main", api_key=own_claude)
        claude.create(model=CLAUDE, max_tokens=20, messages=HI)
        with pytest.raises(anthropic.AuthenticationError):
            claude.create(
                model=CLAUDE, max_tokens=20, messages=HI, extra_headers={"x-sim-error": "401"}
            )
        gemini = f"{self.base('main', 'google-ai-studio')}/v1beta/models/{GEMINI}:generateContent"
        token = self.byok("own")
        header_key = self.planted.new("BYOK google header key", "AIza-byok-")
        self.http.post(gemini, headers={**token, "x-goog-api-key": header_key}, json=GEMINI_BODY)
        query_key = {"key": self.planted.new("BYOK google query key", "AIza-query-")}
        self.http.post(gemini, params=query_key, headers=token, json=GEMINI_BODY)
        self.http.post(gemini, params=query_key, headers=token, content=b"{not json")  # a 400
        own_groq = self.planted.new("BYOK Unified API key", "gsk-byok-")
        self.openai("main", api_key=own_groq, provider="compat").create(model=GROQ, messages=HI)
        step_key = {"authorization": f"Bearer {self.planted.new('Universal step key', 'sk-uni-')}"}
        google_key = self.planted.new("Universal step query key", "AIza-uni-")
        chat_step = {"provider": "openai", "endpoint": "chat/completions",
                     "query": {"model": GPT, "messages": HI}}  # fmt: skip
        gemini_step = f"v1beta/models/{GEMINI}:generateContent?key={google_key}"
        steps = [
            {**chat_step, "headers": {**step_key, "x-sim-error": "500"}},
            {"provider": "google-ai-studio", "endpoint": gemini_step, "query": GEMINI_BODY},
            {**chat_step, "headers": step_key},
        ]
        response = self.http.post(
            f"{self.url}/v1/{self.account_id}/main", headers=token, json=steps
        )
        assert response.headers["cf-aig-step"] == "1", response.text  # the Google key answered

    def stored_keys(self) -> None:
        configs = "/gateways/keys/provider_configs"
        for slug, prefix in [("openai", "sk-stored-"), ("anthropic", "sk-ant-stored-")]:
            secret = self.planted.new(f"stored {slug} key", prefix)
            created = self.api("POST", configs, json={"provider_slug": slug, "secret": secret})
            assert created.status_code == 200, created.text
        config = f"{configs}/{created.json()['result']['id']}"
        self.api("GET", configs)
        self.api("GET", config)
        rotated = self.planted.new("rotated stored key", "sk-ant-rotated-")
        assert self.api("PUT", config, json={"secret": rotated}).status_code == 200
        refused = self.planted.new("refused stored key", "sk-refused-")  # unknown provider: 400
        self.api("POST", configs, json={"provider_slug": "nope", "secret": refused})
        self.openai("keys").create(model=GPT, messages=HI)
        claude = self.anthropic("keys")
        claude.create(model=CLAUDE, max_tokens=20, messages=HI)
        with pytest.raises(anthropic.AuthenticationError):
            claude.create(
                model=CLAUDE, max_tokens=20, messages=HI, extra_headers={"x-sim-error": "401"}
            )
        with pytest.raises(openai.BadRequestError):  # no key has that alias
            self.openai("keys").create(
                model=GPT, messages=HI, extra_headers={"cf-aig-byok-alias": "nobody"}
            )

    def custom_provider(self) -> None:
        stored = self.planted.new("custom provider stored header", "sk-custom-stored-")
        created = self.api("POST", "/custom-providers", json={
            "name": "Mine", "slug": "mine", "base_url": f"{self.sim.url}/openai/v1", "enable": True,
            "headers": json.dumps({"authorization": f"Bearer {stored}"}),
        })  # fmt: skip
        assert created.status_code == 200, created.text
        self.api("GET", "/custom-providers")
        self.api("GET", f"/custom-providers/{created.json()['result']['id']}")
        self.openai("main", provider="custom-mine").create(model="local", messages=HI)
        own = self.planted.new("custom provider request key", "sk-custom-own-")
        self.openai("main", api_key=own, provider="custom-mine").create(model="local", messages=HI)

    def traced_requests(self, collector: Collector) -> None:
        chat = self.openai("traced")
        chat.create(model=GPT, messages=HI)
        with pytest.raises(openai.InternalServerError):
            chat.create(model=GPT, messages=HI, extra_headers={"x-sim-error": "500"})
        wait_for(lambda: len(collector.posts) >= 2, "the OTLP collector got no spans")

    def billing(self, fake: fake_stripe.FakeStripe) -> None:
        method = {"payment_method_id": "pm_card_visa"}
        assert self.api("POST", "/billing/payment-method", json=method).status_code == 200
        assert self.api("POST", "/billing/topup", json={"amount": 2000}).status_code == 200
        self.api("GET", "/billing/credit-balance")
        for n, intent in enumerate(fake.intents.values()):  # Stripe: never log or store them
            value = intent["client_secret"]
            core = value.split("_secret_")[1]
            self.planted.add(Planted(f"Stripe client secret {n}", value, core))
        payload = fake.event_bytes(fake.events[-1])
        for signature in (fake.sign(payload), fake.sign(payload, secret="whsec_wrong")):
            headers = {"content-type": "application/json", "stripe-signature": signature}
            self.http.post(f"{self.url}/stripe/webhook", content=payload, headers=headers)

    def dashboard(self) -> None:
        """Sign in with a wrong token (the form comes back with an error), then with the real
        one, and open every page."""
        base = f"{self.url}/dashboard"
        wrong = self.planted.new("wrong dashboard token", "tg_0badc0de0badc0de")
        with self.recorder.client() as browser:  # keeps the session cookie
            for token in (wrong, self.token):
                form = browser.get(f"{base}/sign-in").text
                found = re.search(r'name="csrf_token" value="([^"]+)"', form)
                assert found, form
                signed = browser.post(
                    f"{base}/sign-in",
                    data={"csrf_token": found.group(1), "token": token},
                    headers={"origin": self.url},
                )
            assert signed.status_code == 303, signed.text
            cookie = browser.cookies["tollgate_session"]
            self.planted.add(Planted("dashboard session id", cookie, cookie))
            for page in ("", "/tokens", "/gateways", "/logs", "/usage", "/limit"):
                assert browser.get(f"{base}/{self.account_id}{page}").status_code == 200, page
            browser.get(f"{base}/{self.account_id}/logs/main/{self.last_logs['main']}")

    def logs_and_metrics(self) -> None:
        for gateway in ("main", "keys", "traced"):
            # One more request: the writer keeps their order, so once its log is there, all are.
            answer = self.openai(gateway).with_raw_response.create(model=GPT, messages=HI)
            logs = f"/gateways/{gateway}/logs"
            last = f"{logs}/{answer.headers['cf-aig-log-id']}"
            wait_for(lambda last=last: self.api("GET", last).status_code == 200, f"no {last}")
            self.last_logs[gateway] = last.rsplit("/", 1)[1]
            listed = self.api("GET", logs, params={"per_page": 50}).json()["result"]
            assert 3 <= len(listed) < 50, listed  # every log of the gateway, on one page
            for entry in listed:
                self.api("GET", f"{logs}/{entry['id']}/request")
                self.api("GET", f"{logs}/{entry['id']}/response")
        self.http.get(f"{self.url}/metrics")


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("postgres", [False, True], ids=["json-log-sqlite", "text-log-pg-redis"])
def test_no_secret_is_left_in_clear(postgres: bool, tmp_path: Path, sim: Sim) -> None:
    planted = Secrets()
    recorder = Recorder()
    password = planted.new("database password", "pgpw-")
    redis_prefix = f"tollgate-scan-{secrets.token_hex(4)}:"
    with contextlib.ExitStack() as stack:
        if postgres:
            plain_url = stack.enter_context(fresh_postgres_database())
            database_url = plain_url.replace("postgres@", f"postgres:{password}@", 1)
        else:
            database_url = f"sqlite:///{tmp_path / 'data' / 'tollgate.db'}"
        fake, stripe_base = stack.enter_context(fake_stripe.serve_fake_stripe())
        collector = stack.enter_context(otlp_collector())
        env = operator_env(planted, sim, tmp_path, database_url, stripe_base)
        env["TOLLGATE_LOG_FORMAT"] = "text" if postgres else "json"
        if postgres:
            env.update(TOLLGATE_REDIS__URL=REDIS_URL, TOLLGATE_REDIS__KEY_PREFIX=redis_prefix)
        stack.callback(recorder.close)
        http = stack.enter_context(recorder.client())

        with serve(tmp_path, env) as (url, process):
            drive = Driver(url, planted, recorder, http, sim)
            drive.accounts_and_tokens()
            drive.gateways(collector)
            drive.managed_requests()
            drive.byok_requests()
            drive.stored_keys()
            drive.custom_provider()
            drive.traced_requests(collector)
            drive.billing(fake)
            drive.logs_and_metrics()
            drive.dashboard()
            running = directory_outputs(tmp_path / "data", " (while serving)")  # journals, WAL
        assert process.returncode == 0  # drained (cli.py swallows the SIGTERM uvicorn re-raises)

        outputs = [
            Output("the gateway's stdout", (tmp_path / "stdout.log").read_bytes()),
            Output("the gateway's stderr", (tmp_path / "stderr.log").read_bytes()),
            *recorder.outputs,
            *collector.posts,
            *running,
            *directory_outputs(tmp_path / "data"),
        ]
        if postgres:
            outputs += asyncio.run(postgres_outputs(plain_url))
            outputs += redis_outputs(REDIS_URL, redis_prefix)
        else:
            outputs += sqlite_outputs(tmp_path / "data" / "tollgate.db")
        unreachable = f"postgresql://postgres:{password}@127.0.0.1:1/nowhere"
        outputs += failed_start_outputs(env, unreachable)

    allowed = Allowed()
    for token in ("account token", "revoked token"):
        allowed.add(token, "/tokens (201)")  # the response that issues it, once
    allowed.add("dashboard session id", "/dashboard/sign-in (303)")  # its Set-Cookie
    for place in ("the database table custom_providers", "tollgate.db", "/custom-providers"):
        allowed.add("custom provider stored header", place)
    for name in ("otel authorization", "otel header"):
        for place in ("the database table gateways", "tollgate.db", "/ai-gateway/gateways"):
            allowed.add(name, place)
        allowed.add(name, "the OTLP collector's request headers")
    assert len(planted.by_name) >= 35, sorted(planted.by_name)
    leaks = find_leaks(planted.by_name.values(), outputs, allowed)
    assert leaks == [], "\n".join(leaks)

    # The scan reads what it claims to: each kind of output holds what it must.
    by_name = planted.by_name
    assert found_in(by_name["account token"], outputs, "/tokens (201)")
    stored = by_name["custom provider stored header"]
    assert found_in(stored, outputs, "the database table custom_providers")
    assert found_in(by_name["otel authorization"], outputs, "collector's request headers")
    assert any(b"tollgate.log_id" in o.data for o in collector.posts)  # spans were exported
    log = outputs[0].data + outputs[1].data
    assert b"Application shutdown complete" in log
    assert f"/v1/{drive.account_id}/main/openai/chat/completions".encode() in log  # access log
    assert b"Request to Stripe api" in log  # a library's lines too
    assert any(o.where.endswith("/metrics (200)") and b"tollgate_" in o.data for o in outputs)
    assert any(o.where.endswith("/request (200)") and b'"hi"' in o.data for o in outputs)
    assert any(b"ConnectionRefusedError" in o.data for o in outputs if "failed" in o.where)
    if postgres:
        assert any(o.where.startswith("the Redis key") and b":cache:" in o.data for o in outputs)
    else:
        assert found_in(stored, outputs, "tollgate.db")  # the database file's own bytes
