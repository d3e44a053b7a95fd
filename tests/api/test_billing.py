"""The billing API through the official `cloudflare` SDK (`client.ai_gateway.billing`) against a
real gateway, sandbox payments; bad input refused with a 400 naming the field, changing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cloudflare
import httpx
import pytest

from tests.support.server import serve_in_thread
from tollgate import money
from tollgate.app import TollgateApp, create_app
from tollgate.operator import issue_token
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import payments as payments_repo

VISA = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}


@dataclass
class Billing:
    base: str
    app: TollgateApp
    database_url: str
    account_id: str
    token: str
    read_only: str
    run_only: str
    other_token: str
    clients: dict[str, cloudflare.Cloudflare] = field(default_factory=dict)

    def client(self, token: str | None = None) -> cloudflare.Cloudflare:
        token = token or self.token
        if token not in self.clients:
            self.clients[token] = cloudflare.Cloudflare(
                api_token=token, base_url=f"{self.base}/client/v4", max_retries=0
            )
        return self.clients[token]

    @property
    def billing(self) -> Any:
        return self.client().ai_gateway.billing

    def raw(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.token}", **kw.pop("headers", {})}
        url = f"{self.base}/client/v4/accounts/{self.account_id}/ai-gateway/billing{path}"
        return httpx.request(method, url, headers=headers, **kw)

    def run(self, work: Callable[[Store], Any]) -> Any:
        async def go() -> Any:
            store = Store(self.database_url)
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def balance_nanos(self) -> int:
        """The balance, after checking it equals the sum of the ledger."""

        async def check(store: Store) -> int:
            account = await account_repo.get_account(store, self.account_id)
            assert account is not None
            assert await ledger_repo.ledger_sum(store, self.account_id) == account.balance_nanos
            return account.balance_nanos

        result: int = self.run(check)
        return result

    def topup_count(self) -> int:
        async def count(store: Store) -> int:
            _, total = await payments_repo.list_topups(
                store, self.account_id, kind=None, offset=0, limit=1
            )
            return total

        result: int = self.run(count)
        return result


async def _seed(database_url: str) -> tuple[str, list[str]]:
    store = Store(database_url)
    try:
        account = await account_repo.create_account(store, "billing tests")
        other = await account_repo.create_account(store, "someone else")
        tokens = []
        for account_id, permissions in (
            (account.id, {"run", "read", "edit"}),
            (account.id, {"read"}),
            (account.id, {"run"}),
            (other.id, {"run", "read", "edit"}),
        ):
            _, secret = await issue_token(
                store, account_id, name="t", permissions=frozenset(permissions)
            )
            tokens.append(secret)
        return account.id, tokens
    finally:
        await store.close()


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[Billing]]:
    @contextmanager
    def run(**env: str) -> Iterator[Billing]:
        settings = make_settings({"TOLLGATE_SANDBOX__ENABLED": "false", **env})
        app = create_app(settings)
        with serve_in_thread(app) as base:
            account_id, tokens = asyncio.run(_seed(settings.database.url))
            running = Billing(base, app, settings.database.url, account_id, *tokens)
            try:
                yield running
                running.balance_nanos()  # the ledger invariant, after every test
            finally:
                for client in running.clients.values():
                    client.close()

    return run


@pytest.fixture
def gw(start: Callable[..., AbstractContextManager[Billing]]) -> Iterator[Billing]:
    with start() as running:
        yield running


@pytest.fixture
def gw_both(
    start: Callable[..., AbstractContextManager[Billing]], database_url: str
) -> Iterator[Billing]:
    """The gateway on SQLite and on PostgreSQL (for the money path)."""
    with start(TOLLGATE_DATABASE_URL=database_url) as running:
        yield running


def add_card(gw: Billing, card: dict[str, Any] | None = None) -> httpx.Response:
    response = gw.raw("POST", "/payment-method", json=card or VISA)
    assert response.status_code == 200, response.text
    return response


# --- the SDK's methods ------------------------------------------------------------------------


def test_credit_balance_of_a_new_account(gw: Billing) -> None:
    balance = gw.billing.credit_balance(account_id=gw.account_id)
    assert balance.balance == 0 and balance.has_default_payment_method is False
    assert balance.payment_method is None and balance.topup_config.amount is None
    assert balance.first_topup_success is False
    extra = balance.model_extra or {}
    assert extra["sandbox"] is True and extra["description"] == "sandbox: simulated, no money moved"


def test_topup_create_and_status_through_the_sdk(gw_both: Billing) -> None:
    gw = gw_both
    card = add_card(gw).json()["result"]
    assert card["payment_method"]["brand"] == "visa" and card["sandbox"] is True
    created = gw.billing.topup.create(account_id=gw.account_id, amount=2500)
    assert created.payment_intent_id.startswith("pi_sandbox_")
    assert (created.onboarding, created.brand, created.last4) == (False, "visa", "4242")
    assert created.client_secret is None
    assert (created.model_extra or {})["sandbox"] is True
    status = gw.billing.topup.status(
        account_id=gw.account_id, payment_intent_id=created.payment_intent_id
    )
    assert (status.payment_intent_id, status.status) == (created.payment_intent_id, "completed")
    balance = gw.billing.credit_balance(account_id=gw.account_id)
    assert balance.balance == 25.0 and balance.first_topup_success is True
    assert balance.has_default_payment_method is True
    assert balance.payment_method is not None and balance.payment_method.last4 == "4242"
    assert gw.balance_nanos() == money.from_cents(2500)


def test_a_replayed_idempotency_key_credits_once(gw_both: Billing) -> None:
    gw = gw_both
    add_card(gw)
    key = {"Idempotency-Key": "order-42"}
    first = gw.billing.topup.create(account_id=gw.account_id, amount=1000, extra_headers=key)
    for _ in range(3):
        again = gw.billing.topup.create(account_id=gw.account_id, amount=1000, extra_headers=key)
        assert again.payment_intent_id == first.payment_intent_id
    reused = gw.raw("POST", "/topup", json={"amount": 5000}, headers=key)
    assert reused.status_code == 409 and reused.json()["errors"][0]["error_code"] == (
        "idempotency_key_reused"
    )
    assert gw.balance_nanos() == money.from_cents(1000) and gw.topup_count() == 1


def test_a_declined_card_is_402_and_credits_nothing(gw: Billing) -> None:
    add_card(gw, {**VISA, "card_number": "4000000000009995"})
    with pytest.raises(cloudflare.APIStatusError) as caught:
        gw.billing.topup.create(account_id=gw.account_id, amount=1000)
    assert caught.value.status_code == 402
    error = caught.value.response.json()["errors"][0]
    assert error["error_code"] == "insufficient_funds" and "simulated" in error["message"]
    assert gw.balance_nanos() == 0


def test_authentication_required_is_pending_with_a_client_secret(gw: Billing) -> None:
    add_card(gw, {**VISA, "card_number": "4000002760003184"})
    created = gw.billing.topup.create(account_id=gw.account_id, amount=1000)
    assert created.client_secret
    status = gw.billing.topup.status(
        account_id=gw.account_id, payment_intent_id=created.payment_intent_id
    )
    assert status.status == "pending"
    assert gw.balance_nanos() == 0


def test_topup_status_of_an_unknown_intent_is_404(gw: Billing) -> None:
    with pytest.raises(cloudflare.NotFoundError):
        gw.billing.topup.status(account_id=gw.account_id, payment_intent_id="pi_nope")


def test_auto_topup_config_create_get_delete(gw: Billing) -> None:
    config = gw.billing.topup.config
    assert config.get(account_id=gw.account_id).amount is None
    no_card = gw.raw("POST", "/topup/config", json={"amount": 1000, "threshold": 500})
    assert no_card.status_code == 400
    add_card(gw)
    created = config.create(account_id=gw.account_id, amount=2000, threshold=500)
    assert (created.amount, created.threshold) == (2000, 500)
    got = config.get(account_id=gw.account_id)
    assert (got.amount, got.threshold, got.disabled_reason, got.error, got.last_failed_at) == (
        2000,
        500,
        None,
        None,
        None,
    )
    balance = gw.billing.credit_balance(account_id=gw.account_id)
    assert balance.topup_config.amount == 2000 and balance.topup_config.threshold == 500
    assert config.delete(account_id=gw.account_id) == {"deleted": True}
    assert config.get(account_id=gw.account_id).amount is None
    assert config.delete(account_id=gw.account_id) == {"deleted": False}


def test_spending_limit_create_get_delete(gw: Billing) -> None:
    limit = gw.billing.spending_limit
    assert limit.get(account_id=gw.account_id).enabled is False
    with pytest.warns(DeprecationWarning):  # deprecated at Cloudflare; live in tollgate
        created = limit.create(
            account_id=gw.account_id, amount=5000, duration="weekly", strategy="sliding"
        )
    assert created == {
        "config": {"amount": 5000, "duration": "weekly", "strategy": "sliding"},
        "enabled": True,
    }
    got = limit.get(account_id=gw.account_id)
    assert got.enabled is True
    assert (got.config.amount, got.config.duration, got.config.strategy) == (
        5000,
        "weekly",
        "sliding",
    )
    assert limit.delete(account_id=gw.account_id) == {"deleted": True}
    assert limit.get(account_id=gw.account_id).enabled is False


def _usage(gw: Billing, *entries: tuple[str | None, int]) -> None:
    async def write(store: Store) -> None:
        for model, nanos in entries:
            await ledger_repo.append_entry(
                store, gw.account_id, kind="usage", amount_nanos=-nanos, model=model
            )

    gw.run(write)


def test_usage_history_by_hour_and_day(gw: Billing) -> None:
    _usage(gw, ("openai/gpt-4o-mini", 1_500_000), ("anthropic/claude-haiku-4.5", 2_000_000))
    now = datetime.now(UTC)
    end_ms = int(now.timestamp() * 1000) + 3_600_000
    start_ms = end_ms - 6 * 3_600_000
    hourly = gw.billing.usage_history(
        account_id=gw.account_id, value_grouping_window="hour", start_time=start_ms, end_time=end_ms
    )
    assert len(hourly.history) in (6, 7)
    assert sum(h.aggregated_value for h in hourly.history) == pytest.approx(0.0035)
    [bucket] = [h for h in hourly.history if h.aggregated_value]
    assert bucket.start_time <= now.timestamp() * 1000 < bucket.end_time
    assert bucket.end_time - bucket.start_time == 3_600_000
    daily = gw.billing.usage_history(account_id=gw.account_id, value_grouping_window="day")
    assert len(daily.history) >= 30
    assert [h.aggregated_value for h in daily.history if h.aggregated_value] == [0.0035]


def test_invoice_history_lists_topups(gw: Billing) -> None:
    add_card(gw)
    gw.billing.topup.create(account_id=gw.account_id, amount=1000)
    gw.billing.topup.create(account_id=gw.account_id, amount=2000)
    history = gw.billing.invoice_history(account_id=gw.account_id, type="manual")
    assert [i.amount_due for i in history.invoices] == [2000, 1000]
    assert all(i.status == "paid" and i.amount_remaining == 0 for i in history.invoices)
    assert all("simulated, no money moved" in (i.description or "") for i in history.invoices)
    assert history.pagination.total_count == 2 and history.pagination.has_more is False
    assert gw.billing.invoice_history(account_id=gw.account_id, type="auto").invoices == []
    assert len(gw.billing.invoice_history(account_id=gw.account_id).invoices) == 2


def test_invoice_preview_has_one_line_per_model(gw: Billing) -> None:
    _usage(
        gw,
        ("openai/gpt-4o-mini", 1_234_567_891),
        ("openai/gpt-4o-mini", 10_000_000),
        ("anthropic/claude-haiku-4.5", 160_000_000),
    )
    preview = gw.billing.invoice_preview(account_id=gw.account_id)
    lines = {line.description.split(":")[0]: line for line in preview.invoice_lines}
    assert set(lines) == {"openai/gpt-4o-mini", "anthropic/claude-haiku-4.5"}
    assert lines["openai/gpt-4o-mini"].amount == 124  # 124.4567891 cents
    assert lines["openai/gpt-4o-mini"].pricing.unit_amount_decimal == "124.4567891"
    assert lines["anthropic/claude-haiku-4.5"].amount == 16
    assert preview.amount_due == 140 and preview.currency == "usd" and preview.status == "draft"
    assert preview.period_start <= datetime.now(UTC).timestamp() < preview.period_end


# --- permissions and bad input ----------------------------------------------------------------


def test_permissions(gw: Billing) -> None:
    assert gw.raw("GET", "/credit-balance", token=gw.read_only).status_code == 200
    assert gw.raw("POST", "/topup", token=gw.read_only, json={"amount": 1000}).status_code == 403
    assert gw.raw("GET", "/credit-balance", token=gw.run_only).status_code == 403
    assert gw.raw("GET", "/credit-balance", token=gw.other_token).status_code == 403
    assert gw.raw("GET", "/credit-balance", token="tg_nope").status_code == 401
    assert gw.raw("DELETE", "/payment-method", token=gw.read_only).status_code == 403


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"amount": -1000}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": 999}, "amount"),  # below the minimum
        ({"amount": 1000.5}, "amount"),  # fractional cents
        ({"amount": 1000.0}, "amount"),  # a float, even a whole one
        ({"amount": 10**12}, "amount"),  # huge
        ({"amount": 10**30}, "amount"),
        ({"amount": "1000"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": None}, "amount"),
        ({}, "amount"),
        ({"amount": 1000, "payment_method_id": 7}, "payment_method_id"),
    ],
)
def test_bad_topup_amounts_are_400_naming_the_field_and_change_nothing(
    gw: Billing, body: dict[str, Any], field_name: str
) -> None:
    add_card(gw)
    response = gw.raw("POST", "/topup", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["message"].startswith(field_name)
    assert gw.balance_nanos() == 0 and gw.topup_count() == 0


@pytest.mark.parametrize("content", [b"", b"not json", b"[1000]", b'"1000"'])
def test_malformed_bodies_are_400(gw: Billing, content: bytes) -> None:
    response = gw.raw("POST", "/topup", content=content)
    assert response.status_code == 400 and gw.topup_count() == 0


@pytest.mark.parametrize(
    ("path", "body", "field_name"),
    [
        ("/topup/config", {"amount": 999, "threshold": 500}, "amount"),
        ("/topup/config", {"amount": 1000, "threshold": 499}, "threshold"),
        ("/topup/config", {"amount": 1000, "threshold": 1.5}, "threshold"),
        ("/topup/config", {"amount": 1000, "threshold": 500, "monthly_cap": 999}, "monthly_cap"),
        ("/spending-limit", {"amount": 99, "duration": "daily", "strategy": "fixed"}, "amount"),
        ("/spending-limit", {"amount": 10**15, "duration": "daily", "strategy": "fixed"}, "amount"),
        ("/spending-limit", {"amount": 100, "duration": "yearly", "strategy": "fixed"}, "duration"),
        ("/spending-limit", {"amount": 100, "duration": "daily", "strategy": "x"}, "strategy"),
        ("/topup/status", {"payment_intent_id": 5}, "payment_intent_id"),
        ("/payment-method", {**VISA, "card_number": "4111111111111111"}, "card_number"),
        ("/payment-method", {**VISA, "exp_month": 0}, "exp_month"),
        ("/payment-method", {**VISA, "cvc": "1"}, "cvc"),
    ],
)
def test_bad_config_bodies_are_400_naming_the_field(
    gw: Billing, path: str, body: dict[str, Any], field_name: str
) -> None:
    add_card(gw)
    response = gw.raw("POST", path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["message"].startswith(field_name)
    assert gw.billing.topup.config.get(account_id=gw.account_id).amount is None
    assert gw.billing.spending_limit.get(account_id=gw.account_id).enabled is False


@pytest.mark.parametrize(
    ("query", "field_name"),
    [
        ({}, "value_grouping_window"),
        ({"value_grouping_window": "week"}, "value_grouping_window"),
        ({"value_grouping_window": "hour", "start_time": "yesterday"}, "start_time"),
        ({"value_grouping_window": "hour", "end_time": "-5"}, "end_time"),
        ({"value_grouping_window": "hour", "start_time": "2000", "end_time": "1000"}, "start_time"),
        ({"value_grouping_window": "hour", "start_time": "0"}, "start_time"),  # > 1000 buckets
    ],
)
def test_bad_usage_history_queries_are_400(
    gw: Billing, query: dict[str, str], field_name: str
) -> None:
    response = gw.raw("GET", "/usage-history", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["message"].startswith(field_name)


def test_bad_invoice_history_type_is_400(gw: Billing) -> None:
    response = gw.raw("GET", "/invoice-history", params={"type": "weird"})
    assert response.status_code == 400 and "type" in response.json()["errors"][0]["message"]


def test_topup_without_a_card_says_how_to_add_one(gw: Billing) -> None:
    response = gw.raw("POST", "/topup", json={"amount": 1000})
    assert response.status_code == 400
    assert response.json()["errors"][0]["error_code"] == "payment_method_required"
    assert "payment-method" in response.json()["errors"][0]["message"]


def test_payment_method_replace_and_delete(gw: Billing) -> None:
    add_card(gw)
    add_card(gw, {**VISA, "card_number": "5555555555554444"})
    balance = gw.billing.credit_balance(account_id=gw.account_id)
    assert balance.payment_method is not None and balance.payment_method.brand == "mastercard"
    assert gw.raw("DELETE", "/payment-method").json()["result"]["deleted"] is True
    assert gw.billing.credit_balance(account_id=gw.account_id).has_default_payment_method is False


def test_topup_limits(gw: Billing) -> None:
    limits = gw.raw("GET", "/topup/limits").json()["result"]
    assert (limits["minimum"], limits["maximum"], limits["fee_percent"]) == (1000, 1_000_000, "0")
