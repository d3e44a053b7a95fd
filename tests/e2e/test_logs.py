"""Request logs end to end: traffic through the official `openai` SDK, logs read back through the
official `cloudflare` SDK, on SQLite and PostgreSQL, against a real gateway and the simulator.

The writer batches: a test that expects a log polls for it. A test that expects *no* log sends
a logged request afterwards and waits for that one: the writer keeps order, so once the later
log is there the earlier one would have been too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Sim, provider_env
from tests.support.accounts import Seeded, add_token, seed_account
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings
from tollgate.store import Store
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogQuery, LogRecord
from tollgate.store.migrate import migrate

PROMPT = [{"role": "user", "content": "Say hello"}]


@dataclass
class Logged:
    url: str
    database_url: str
    account: Seeded
    clients: list[Any] = field(default_factory=list)

    def openai(self, gateway: str = "default", **headers: str) -> openai.OpenAI:
        client = openai.OpenAI(
            api_key=self.account.token,
            base_url=f"{self.url}/v1/{self.account.account_id}/{gateway}/openai",
            max_retries=0,
            default_headers=headers or None,
        )
        self.clients.append(client)
        return client

    def chat(self, gateway: str = "default", **headers: str) -> tuple[str, Any]:
        """One chat completion; returns its cf-aig-log-id and the parsed reply."""
        raw = self.openai(gateway, **headers).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=20
        )
        return raw.headers["cf-aig-log-id"], raw.parse()

    @property
    def cf(self) -> Any:
        client = cloudflare.Cloudflare(
            api_token=self.account.token, base_url=f"{self.url}/client/v4", max_retries=0
        )
        self.clients.append(client)
        return client.ai_gateway

    def get_log(self, log_id: str, gateway: str = "default") -> Any:
        return self.cf.logs.get(log_id, account_id=self.account.account_id, gateway_id=gateway)

    def wait_for_log(self, log_id: str, gateway: str = "default", timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_log(log_id, gateway)
            except cloudflare.NotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def assert_never_logged(self, log_id: str, gateway: str = "default") -> None:
        # a marker in the default gateway: the writer keeps order across gateways
        later, _ = self.chat("default", **{"cf-aig-collect-log": "true"})
        self.wait_for_log(later, "default")
        with pytest.raises(cloudflare.NotFoundError):
            self.get_log(log_id, gateway)


@pytest.fixture
def start_logged(
    tmp_path: Path, sim: Sim, database_url: str
) -> Callable[..., AbstractContextManager[Logged]]:
    @contextmanager
    def start(**env: str) -> Iterator[Logged]:
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_LOGS__FLUSH_INTERVAL_MS": "20",
                **provider_env(sim.url),
                **env,
            }
        )
        account = seed_account(database_url)
        with serve_in_thread(create_app(settings)) as url:
            running = Logged(url, database_url, account)
            yield running
            for client in running.clients:
                client.close()

    return start


@pytest.fixture
def logged(start_logged: Callable[..., AbstractContextManager[Logged]]) -> Iterator[Logged]:
    with start_logged() as running:
        yield running


def create_gateway(logged: Logged, gateway_id: str, **settings: Any) -> None:
    body = {**REQUIRED_GATEWAY_FIELDS, **settings}
    logged.cf.create(account_id=logged.account.account_id, id=gateway_id, **body)


# --- what a log holds -------------------------------------------------------------------------


def test_a_chat_completion_is_logged_with_cloudflares_fields(logged: Logged) -> None:
    raw = logged.openai(
        **{"cf-aig-metadata": '{"team":"search","tier":2}', "cf-aig-event-id": "evt-1"}
    ).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT)
    reply = raw.parse()
    log_id = raw.headers["cf-aig-log-id"]

    log = logged.wait_for_log(log_id)

    assert log.id == log_id
    assert log.provider == "openai" and log.model == "gpt-4o-mini"
    assert log.path == "chat/completions" and log.request_type == "native"
    assert log.status_code == 200 and log.success is True and log.cached is False
    assert reply.usage is not None
    assert (log.tokens_in, log.tokens_out) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert log.cost is not None and log.cost > 0
    assert log.cost == pytest.approx(float(raw.headers["cf-aig-cost"]), abs=1e-6)
    extra = log.model_extra or {}
    assert extra["cost_estimated"] is False and extra["zdr"] is False
    assert extra["event_id"] == "evt-1"
    assert json.loads(log.metadata) == {"team": "search", "tier": 2}
    assert 0 <= log.duration < 10_000
    assert abs(log.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert log.request_content_type == "application/json"
    assert log.response_content_type.startswith("application/json")
    assert log.request_head_complete is True and log.response_head_complete is True
    assert json.loads(log.request_head)["messages"] == PROMPT
    assert log.request_size == len(log.request_head.encode())

    account, gateway = logged.account.account_id, "default"
    request = logged.cf.logs.request(log_id, account_id=account, gateway_id=gateway)
    response = logged.cf.logs.response(log_id, account_id=account, gateway_id=gateway)
    assert request["model"] == "gpt-4o-mini" and request["messages"] == PROMPT
    assert response["id"] == reply.id
    assert response["choices"][0]["message"]["content"] == reply.choices[0].message.content


def test_a_streamed_completion_keeps_the_stream_and_its_usage(logged: Logged) -> None:
    raw = logged.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True
    )
    log_id = raw.headers["cf-aig-log-id"]
    chunks = list(raw.parse())
    assert chunks

    log = logged.wait_for_log(log_id)

    assert log.status_code == 200 and log.success is True
    assert log.response_content_type.startswith("text/event-stream")
    assert log.tokens_out is not None and log.tokens_out > 0
    assert log.response_head.startswith("data: ") and "data: [DONE]\n\n" in log.response_head
    body = logged.cf.logs.response(
        log_id, account_id=logged.account.account_id, gateway_id="default"
    )
    assert isinstance(body, str) and body == log.response_head


def test_a_refused_request_is_logged_as_a_failure(logged: Logged) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        logged.openai().chat.completions.create(model="no-such-model-anywhere", messages=PROMPT)
    log_id = refused.value.response.headers["cf-aig-log-id"]

    log = logged.wait_for_log(log_id)

    assert log.status_code == 400 and log.success is False
    assert log.model == "no-such-model-anywhere" and log.cost is None
    assert "error" in json.loads(log.response_head)


def test_a_caller_without_a_valid_token_leaves_no_log(logged: Logged) -> None:
    client = openai.OpenAI(
        api_key="tg_not-a-real-token",
        base_url=f"{logged.url}/v1/{logged.account.account_id}/default/openai",
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    client.close()
    logged.assert_never_logged(refused.value.response.headers["cf-aig-log-id"])


# --- the collect headers and the gateway setting --------------------------------------------


def test_collect_log_false_writes_no_log(logged: Logged) -> None:
    log_id, _ = logged.chat(**{"cf-aig-collect-log": "false"})
    logged.assert_never_logged(log_id)


def test_collect_log_payload_false_keeps_the_log_without_bodies(logged: Logged) -> None:
    log_id, reply = logged.chat(**{"cf-aig-collect-log-payload": "false"})

    log = logged.wait_for_log(log_id)

    assert log.tokens_in == reply.usage.prompt_tokens and log.cost is not None
    assert log.request_head is None and log.response_head is None
    assert log.request_size > 0 and log.response_size > 0
    for fetch in (logged.cf.logs.request, logged.cf.logs.response):
        with pytest.raises(cloudflare.NotFoundError, match="collect-log-payload"):
            fetch(log_id, account_id=logged.account.account_id, gateway_id="default")


def test_a_gateway_with_collect_logs_off_logs_only_what_a_request_asks_for(
    logged: Logged,
) -> None:
    create_gateway(logged, "quiet", collect_logs=False)

    silent, _ = logged.chat("quiet")
    asked, _ = logged.chat("quiet", **{"cf-aig-collect-log": "true"})

    assert logged.wait_for_log(asked, "quiet").id == asked
    with pytest.raises(cloudflare.NotFoundError):
        logged.get_log(silent, "quiet")


@pytest.mark.parametrize(
    ("name", "value"),
    [("cf-aig-collect-log", "nope"), ("cf-aig-collect-log-payload", "1")],
)
def test_a_bad_collect_header_is_a_400_naming_it_and_nothing_is_sent(
    logged: Logged, sim: Sim, name: str, value: str
) -> None:
    sim.clear()
    with pytest.raises(openai.BadRequestError) as refused:
        logged.openai(**{name: value}).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert refused.value.status_code == 400
    assert name in refused.value.message and value in refused.value.message
    assert sim.requests() == []


# --- bodies are capped --------------------------------------------------------------------------


def test_bodies_over_the_cap_are_cut_and_flagged(
    start_logged: Callable[..., AbstractContextManager[Logged]],
) -> None:
    with start_logged(TOLLGATE_LOGS__BODY_MAX_BYTES="64") as logged:
        log_id, _ = logged.chat()
        log = logged.wait_for_log(log_id)

        assert log.request_head_complete is False and log.response_head_complete is False
        assert len(log.request_head.encode()) == 64 and len(log.response_head.encode()) == 64
        assert log.request_size > 64 and log.response_size > 64
        account = logged.account.account_id
        response = httpx.get(
            f"{logged.url}/client/v4/accounts/{account}/ai-gateway/gateways/default/logs/"
            f"{log_id}/request",
            headers={"authorization": f"Bearer {logged.account.token}"},
        )
        assert response.status_code == 200
        assert response.headers["x-tollgate-body-complete"] == "false"
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == log.request_head


# --- nothing is lost on a graceful shutdown -------------------------------------------------------


def stored_logs(database_url: str, account_id: str, gateway_id: str = "default") -> list[str]:
    async def read() -> list[str]:
        store = Store(database_url)
        try:
            records, _ = await log_repo.list_logs(
                store, account_id, gateway_id, LogQuery(), offset=0, limit=1000
            )
            return [r.id for r in records]
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_graceful_shutdown_writes_every_waiting_log(
    start_logged: Callable[..., AbstractContextManager[Logged]],
) -> None:
    # A flush interval far longer than the test: only the shutdown can write these logs.
    with start_logged(
        TOLLGATE_LOGS__FLUSH_INTERVAL_MS="60000", TOLLGATE_LOGS__BATCH_SIZE="10000"
    ) as logged:
        ids = [logged.chat()[0] for _ in range(5)]
        assert stored_logs(logged.database_url, logged.account.account_id) == []
    assert sorted(stored_logs(logged.database_url, logged.account.account_id)) == sorted(ids)


# --- log_management -------------------------------------------------------------------------------

LIMIT = 10_000  # the smallest log_management Cloudflare's API accepts


def seed_logs(database_url: str, account_id: str, gateway_id: str, count: int) -> list[str]:
    """`count` old logs straight into the store (the oldest first); returns their ids."""
    start = datetime.now(UTC) - timedelta(days=1)
    records = [
        LogRecord(
            id=f"{i:032x}",
            account_id=account_id,
            gateway_id=gateway_id,
            created_at=start + timedelta(milliseconds=i),
            provider="openai",
            model="seeded",
            path="chat/completions",
            request_type="native",
            status_code=200,
            success=True,
            cached=False,
            duration_ms=1,
            tokens_in=1,
            tokens_out=1,
            cost_nanos=1,
            cost_estimated=False,
            custom_cost=False,
            credential_source="unified",
            zdr=False,
            metadata=None,
            event_id=None,
            step=None,
            user_agent=None,
            request_content_type=None,
            response_content_type=None,
            request_size=0,
            response_size=0,
            payload_collected=False,
            request_complete=True,
            response_complete=True,
        )
        for i in range(count)
    ]

    async def insert() -> None:
        store = Store(database_url)
        try:
            await migrate(store)
            await log_repo.insert_logs(store, records)
        finally:
            await store.close()

    asyncio.run(insert())
    return [r.id for r in records]


def count_logs(database_url: str, account_id: str, gateway_id: str) -> int:
    async def count() -> int:
        store = Store(database_url)
        try:
            return await log_repo.count_gateway_logs(store, account_id, gateway_id)
        finally:
            await store.close()

    return asyncio.run(count())


def test_stop_inserting_keeps_the_first_logs_and_drops_new_ones(logged: Logged) -> None:
    create_gateway(logged, "capped", log_management=LIMIT, log_management_strategy="STOP_INSERTING")
    account = logged.account.account_id
    seed_logs(logged.database_url, account, "capped", LIMIT - 1)

    fits, _ = logged.chat("capped")
    logged.wait_for_log(fits, "capped")
    over, _ = logged.chat("capped")
    logged.assert_never_logged(over, "capped")

    assert count_logs(logged.database_url, account, "capped") == LIMIT
    # the default gateway has no limit: its logs are unaffected
    assert logged.wait_for_log(logged.chat()[0]).success is True


def test_delete_oldest_makes_room_for_new_logs(logged: Logged) -> None:
    create_gateway(logged, "rolling", log_management=LIMIT, log_management_strategy="DELETE_OLDEST")
    account = logged.account.account_id
    seeded = seed_logs(logged.database_url, account, "rolling", LIMIT)

    newest = [logged.chat("rolling")[0] for _ in range(3)]
    for log_id in newest:
        logged.wait_for_log(log_id, "rolling")

    assert count_logs(logged.database_url, account, "rolling") == LIMIT
    for gone in seeded[:3]:
        with pytest.raises(cloudflare.NotFoundError):
            logged.get_log(gone, "rolling")
    assert logged.get_log(seeded[3], "rolling").model == "seeded"


# --- the Logs API on real traffic -----------------------------------------------------------------


def test_feedback_and_filters_on_real_traffic(logged: Logged) -> None:
    account = logged.account.account_id
    good, _ = logged.chat(**{"cf-aig-metadata": '{"user":"ada"}'})
    other, _ = logged.chat(**{"cf-aig-metadata": '{"user":"bob"}'})
    logged.wait_for_log(other)
    logged.wait_for_log(good)

    logged.cf.logs.edit(good, account_id=account, gateway_id="default", feedback=1, score=90)
    found = logged.cf.logs.list(
        "default",
        account_id=account,
        filters=[{"key": "metadata.value", "operator": "eq", "value": ["ada"]}],
    )
    assert [log.id for log in found.result] == [good]
    liked = logged.cf.logs.list("default", account_id=account, feedback=1)
    assert [log.id for log in liked.result] == [good]
    assert logged.get_log(good).model_extra["score"] == 90


def test_another_accounts_token_cannot_read_the_logs(logged: Logged) -> None:
    log_id, _ = logged.chat()
    logged.wait_for_log(log_id)
    stranger = seed_account(logged.database_url, name="stranger")
    reader = add_token(
        logged.database_url, stranger.account_id, permissions=frozenset({"read", "run"})
    )
    client = cloudflare.Cloudflare(
        api_token=reader, base_url=f"{logged.url}/client/v4", max_retries=0
    )
    with pytest.raises(cloudflare.PermissionDeniedError):
        client.ai_gateway.logs.get(
            log_id, account_id=logged.account.account_id, gateway_id="default"
        )
    with pytest.raises(cloudflare.PermissionDeniedError):
        client.ai_gateway.logs.list("default", account_id=logged.account.account_id)
    client.close()


def test_a_byok_request_is_logged_with_its_tokens_and_priced_cost_but_not_billed(
    logged: Logged,
) -> None:
    """The client's own key pays: nothing is held or charged, no cost header is sent, and the
    log still shows the tokens and what the catalog prices them at (as Cloudflare's logs do)."""
    client = openai.OpenAI(
        api_key="sk-the-clients-own-key",
        base_url=f"{logged.url}/v1/{logged.account.account_id}/default/openai",
        max_retries=0,
        default_headers={"cf-aig-authorization": f"Bearer {logged.account.token}"},
    )
    logged.clients.append(client)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=20
    )
    reply = raw.parse()
    assert "cf-aig-cost" not in raw.headers

    log = logged.wait_for_log(raw.headers["cf-aig-log-id"])

    assert reply.usage is not None
    assert (log.tokens_in, log.tokens_out) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert log.cost is not None and log.cost > 0
    extra = log.model_extra or {}
    assert extra["credential_source"] == "byok" and extra["cost_estimated"] is False


def test_deleting_a_gateway_deletes_its_logs_and_no_other_gateways(logged: Logged) -> None:
    """A gateway created again under the same id starts with no logs; others keep theirs."""
    account = logged.account.account_id
    create_gateway(logged, "short-lived")
    gone, _ = logged.chat("short-lived")
    kept, _ = logged.chat()
    logged.wait_for_log(gone, "short-lived")
    logged.wait_for_log(kept)

    logged.cf.delete("short-lived", account_id=account)
    create_gateway(logged, "short-lived")

    assert stored_logs(logged.database_url, account, "short-lived") == []
    assert kept in stored_logs(logged.database_url, account)
