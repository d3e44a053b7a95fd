"""`tollgate demo`: a scripted tour of Unified Billing against simulated providers, in under a
minute, that checks what it shows.

It starts everything it needs in this process, on free loopback ports, in a temporary directory
that it deletes afterwards: the upstream simulator (every provider's wire format, nothing leaves
the machine), a second simulator standing for the operator's Zero Data Retention endpoint, and a
gateway on SQLite with the sandbox payment provider (Stripe test cards, no money moves). Then,
through the same public surfaces a user has, it:

1. creates an account and an API token (the operator admin API);
2. saves a test card and tops up $20 with it (the billing API);
3. calls OpenAI, Anthropic and Google models natively (the official `openai`, `anthropic` and
   `google-genai` SDKs), through the OpenAI-compatible endpoint, and through `tollgate.sdk`,
   printing each call's cost and the balance as it falls;
4. turns the gateway's ZDR setting on and shows the next request going to the ZDR endpoint;
5. sets a $1 daily spending limit and hits it (429);
6. sets up auto top-up above the balance and watches one charge land;
7. prints the dashboard's URL.

Every step checks its outcome (a cost that matches the drop in balance, the upstream that
served, the status code, the new balance). The first one that does not behave as it says stops
the tour with exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tollgate.app import create_app
from tollgate.providers.registry import PROVIDERS
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app

# This run's operator token: random, so a gateway kept serving (`--serve`) is not open to anyone.
ADMIN_TOKEN = f"tgop_{secrets.token_urlsafe(24)}"
MANAGED_KEY = "sk-demo-managed"
ZDR_KEY = "sk-demo-zdr"
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
HELLO = [{"role": "user", "content": "Say hello in five words."}]


class DemoFailed(Exception):
    """A step did not behave as the tour says it does."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in a background thread; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DemoFailed("a demo server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def gateway_env(data: Path, sim: str, zdr_sim: str) -> dict[str, str]:
    """Every provider on the simulator with a managed key; OpenAI's ZDR on the second one."""
    env = {
        "TOLLGATE_DATA_DIR": str(data),
        "TOLLGATE_DATABASE_URL": f"sqlite:///{data / 'demo.db'}",
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_LOG_LEVEL": "error",
    }
    for slug, row in PROVIDERS.items():
        name = slug.upper().replace("-", "_")
        env[f"TOLLGATE_PROVIDERS__{name}__BASE_URL"] = sim + row.sim_path
        env[f"TOLLGATE_PROVIDERS__{name}__API_KEY"] = MANAGED_KEY
    env["TOLLGATE_PROVIDERS__OPENAI__ZDR_BASE_URL"] = zdr_sim + PROVIDERS["openai"].sim_path
    env["TOLLGATE_PROVIDERS__OPENAI__ZDR_API_KEY"] = ZDR_KEY
    return env


class Tour:
    """The steps, over one gateway. `say` prints a line (the CLI passes its console)."""

    def __init__(self, url: str, sim: str, zdr_sim: str, say: Callable[[str], None]) -> None:
        self.url, self.sim, self.zdr_sim, self.say = url, sim, zdr_sim, say
        self.http = httpx.Client(timeout=30)
        self.account = ""
        self.token = ""
        self.balance = Decimal(0)

    # --- helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, *, admin: bool = False, **kwargs: Any) -> Any:
        token = ADMIN_TOKEN if admin else self.token
        response = self.http.request(
            method, self.url + path, headers={"authorization": f"Bearer {token}"}, **kwargs
        )
        check(
            response.is_success,
            f"{method} {path} answered {response.status_code}: {response.text[:300]}",
        )
        return response.json()

    def billing(self, method: str, path: str, **kwargs: Any) -> Any:
        base = f"/client/v4/accounts/{self.account}/ai-gateway/billing"
        return self.call(method, base + path, **kwargs)["result"]

    def read_balance(self) -> Decimal:
        return Decimal(str(self.billing("GET", "/credit-balance")["balance"]))

    def base(self, provider: str) -> str:
        return f"{self.url}/v1/{self.account}/default/{provider}"

    def billed(self, label: str, headers: Mapping[str, str]) -> None:
        """Print a call's cost and check the balance fell by exactly that much."""
        cost = Decimal(headers["cf-aig-cost"])
        remaining = Decimal(headers["cf-aig-credits-remaining"])
        check(cost > 0, f"{label}: no cost was reported")
        check(
            remaining == self.balance - cost,
            f"{label}: the balance went from {self.balance} to {remaining}, not down by {cost}",
        )
        self.balance = remaining
        self.say(f"  {label:<44} cost ${cost:<12} balance ${remaining}")

    def sim_requests(self, sim: str) -> int:
        return len(self.http.get(f"{sim}/_sim/requests").json())

    # --- the steps -------------------------------------------------------------------------

    def create_account(self) -> None:
        account = self.call("POST", "/admin/v1/accounts", admin=True, json={"name": "Demo Co"})
        self.account = account["id"]
        token = self.call(
            "POST",
            f"/admin/v1/accounts/{self.account}/tokens",
            admin=True,
            json={"name": "demo", "permissions": ["run", "read", "edit"]},
        )
        self.token = token["token"]
        self.say(f"1. Created account {self.account} and a run,read,edit API token.")

    def top_up(self) -> None:
        self.billing("POST", "/payment-method", json=CARD)
        topup = self.billing("POST", "/topup", json={"amount": 2000})
        status = self.billing(
            "POST", "/topup/status", json={"payment_intent_id": topup["payment_intent_id"]}
        )
        check(status["status"] == "completed", f"the top-up is {status['status']}")
        self.balance = self.read_balance()
        check(self.balance == 20, f"after a $20 top-up the balance is ${self.balance}")
        self.say(f"2. Saved test card 4242 and topped up $20: balance ${self.balance}.")

    def call_models(self) -> None:
        import anthropic
        import openai
        from google import genai
        from google.genai import types

        from tollgate.sdk import AI

        self.say("3. Models through every path, each call's cost and the balance:")
        native = openai.OpenAI(api_key=self.token, base_url=self.base("openai"), max_retries=0)
        reply = native.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HELLO,  # type: ignore[arg-type]
        )
        self.billed("openai gpt-4o-mini (native, openai SDK)", reply.headers)
        claude = anthropic.Anthropic(
            api_key=self.token, base_url=self.base("anthropic"), max_retries=0
        )
        message = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=HELLO,  # type: ignore[arg-type]
        )
        self.billed("anthropic claude-sonnet-4-6 (native)", message.headers)
        seen: dict[str, str] = {}

        def keep_headers(response: httpx.Response) -> None:
            seen.update(response.headers)

        gemini = genai.Client(
            api_key=self.token,
            http_options=types.HttpOptions(
                base_url=self.base("google-ai-studio"),
                httpx_client=httpx.Client(event_hooks={"response": [keep_headers]}),
            ),
        )
        gemini.models.generate_content(model="gemini-2.5-flash", contents="Say hello.")
        self.billed("google gemini-2.5-flash (native, google-genai)", seen)
        compat = openai.OpenAI(api_key=self.token, base_url=self.base("compat"), max_retries=0)
        for model in ("anthropic/claude-haiku-4-5", "google-ai-studio/gemini-2.5-flash"):
            raw = compat.chat.completions.with_raw_response.create(
                model=model,
                messages=HELLO,  # type: ignore[arg-type]
            )
            self.billed(f"{model} (compat)", raw.headers)
        with AI(self.account, self.token, base_url=self.url) as ai:
            before = self.read_balance()
            answer = ai.run("openai/gpt-4o", {"prompt": "Say hello.", "max_tokens": 50})
            check(bool(answer["choices"]), "tollgate.sdk's run returned no choices")
            after = self.read_balance()
            check(after < before, "the tollgate.sdk call did not lower the balance")
            self.say(
                f"  {'openai/gpt-4o (tollgate.sdk)':<44} cost ${before - after:<12} "
                f"balance ${after}"
            )
            self.balance = after

    def zero_data_retention(self) -> None:
        gateway = f"/client/v4/accounts/{self.account}/ai-gateway/gateways/default"
        client = httpx.Client(base_url=self.base("openai"), timeout=30)
        headers = {"authorization": f"Bearer {self.token}"}
        body = {"model": "gpt-4o-mini", "messages": HELLO}
        standard, zdr = self.sim_requests(self.sim), self.sim_requests(self.zdr_sim)
        off = client.post("/chat/completions", headers=headers, json=body)
        check(off.headers.get("cf-aig-zdr") == "false", "ZDR off: cf-aig-zdr is not false")
        check(self.sim_requests(self.sim) == standard + 1, "ZDR off: not the standard upstream")
        self.call("PUT", gateway, json={**self.gateway_settings(gateway), "zdr": True})
        on = client.post("/chat/completions", headers=headers, json=body)
        check(on.headers.get("cf-aig-zdr") == "true", "ZDR on: cf-aig-zdr is not true")
        check(self.sim_requests(self.zdr_sim) == zdr + 1, "ZDR on: the ZDR upstream was not used")
        self.balance = Decimal(on.headers["cf-aig-credits-remaining"])
        self.say("4. ZDR off: served by the standard OpenAI endpoint (cf-aig-zdr: false).")
        self.say("   ZDR on:  the same request went to the ZDR endpoint (cf-aig-zdr: true).")

    def gateway_settings(self, path: str) -> dict[str, Any]:
        found = self.call("GET", path)["result"]
        keep = (
            "cache_ttl",
            "cache_invalidate_on_update",
            "collect_logs",
            "rate_limiting_limit",
            "rate_limiting_interval",
            "rate_limiting_technique",
        )
        return {key: found[key] for key in keep if key in found}

    def spending_limit(self) -> None:
        self.billing(
            "POST",
            "/spending-limit",
            json={"amount": 100, "duration": "daily", "strategy": "fixed"},
        )
        response = self.http.post(
            f"{self.base('anthropic')}/v1/messages",
            headers={"x-api-key": self.token, "anthropic-version": "2023-06-01"},
            json={"model": "claude-opus-4-6", "max_tokens": 64_000, "messages": HELLO},
        )
        check(response.status_code == 429, f"over the limit answered {response.status_code}")
        retry_after = response.headers.get("retry-after")
        check(retry_after is not None, "the 429 has no Retry-After")
        self.say(
            f"5. Daily limit $1.00: a request that could cost more got 429 "
            f"(Retry-After {retry_after} s)."
        )
        self.billing("DELETE", "/spending-limit")

    def auto_top_up(self) -> None:
        threshold_cents = int(self.balance * 100) + 500  # above the balance: the next settle
        self.billing("POST", "/topup/config", json={"amount": 1000, "threshold": threshold_cents})
        reply = httpx.post(
            f"{self.base('openai')}/chat/completions",
            headers={"authorization": f"Bearer {self.token}"},
            json={"model": "gpt-4o-mini", "messages": HELLO},
            timeout=30,
        )
        check(reply.status_code == 200, f"the request after auto top-up set-up: {reply.text}")
        spent = Decimal(reply.headers["cf-aig-cost"])
        expected = self.balance - spent + 10
        deadline = time.monotonic() + 10
        while (balance := self.read_balance()) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        check(balance == expected, f"after auto top-up the balance is ${balance}, not ${expected}")
        invoices = self.billing("GET", "/invoice-history", params={"type": "auto"})["invoices"]
        check(len(invoices) == 1, f"{len(invoices)} auto top-up invoices, expected exactly 1")
        self.balance = balance
        self.say(
            f"6. Auto top-up below ${Decimal(threshold_cents) / 100}: one $10 charge, "
            f"balance ${balance}."
        )
        self.billing("DELETE", "/topup/config")

    def dashboard(self) -> None:
        self.say(f"7. Dashboard: {self.url}/dashboard (sign in with the demo token).")


def run_demo(say: Callable[[str], None] = print, *, keep_serving: bool = False) -> int:
    """The whole tour; 0 when every step behaved as it says, else 1 (the reason printed).

    `keep_serving`: after the tour, leave the gateway up (until Ctrl+C) and print the demo
    account's token, so its dashboard can be opened; by default everything stops."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tollgate-demo-") as tmp:
        try:
            with serve(create_sim_app()) as sim, serve(create_sim_app()) as zdr_sim:
                settings = load_settings(env=gateway_env(Path(tmp), sim, zdr_sim))
                with serve(create_app(settings)) as url:
                    tour = Tour(url, sim, zdr_sim, say)
                    say(
                        f"tollgate demo: a gateway at {url}, providers simulated, payments "
                        "sandboxed (no money moves)."
                    )
                    for step in (
                        tour.create_account,
                        tour.top_up,
                        tour.call_models,
                        tour.zero_data_retention,
                        tour.spending_limit,
                        tour.auto_top_up,
                        tour.dashboard,
                    ):
                        step()
                    say(f"Done in {time.monotonic() - started:.1f} s: every step behaved as shown.")
                    if keep_serving:
                        wait_for_interrupt(say, tour)
                    else:
                        say("The demo's gateway stops now; `tollgate demo --serve` keeps it up.")
        except DemoFailed as failed:
            say(f"demo FAILED: {failed}")
            return 1
    return 0


def wait_for_interrupt(say: Callable[[str], None], tour: Tour) -> None:
    say(f"Serving until Ctrl+C. Dashboard {tour.url}/dashboard, token {tour.token}")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
