"""Sandbox mode: no provider keys, the simulator in-process, a demo account ready to use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anthropic
import httpx
import openai
from google import genai
from google.genai import types as genai_types

from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo


def sandbox_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'tollgate.db'}",
        }
    )


def test_first_start_creates_demo_account_token_and_credits(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    assert settings.sandbox_mode
    with serve_in_thread(create_app(settings)) as url:
        saved = json.loads((tmp_path / "data" / "sandbox-credentials.json").read_text())
        assert (tmp_path / "data" / "sandbox-credentials.json").stat().st_mode & 0o777 == 0o600
        base = f"{url}/v1/{saved['account_id']}/default"

        client = openai.OpenAI(api_key=saved["token"], base_url=f"{base}/openai", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sandbox"}]
        )
        assert raw.headers["x-tollgate-sandbox"] == "simulated"
        assert raw.parse().choices[0].message.content

        # The other wire formats answer too, through the same sandbox.
        message = anthropic.Anthropic(
            api_key=saved["token"], base_url=f"{base}/anthropic", max_retries=0
        ).messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
        )
        assert message.content[0].type == "text"
        gemini = genai.Client(
            api_key=saved["token"],
            http_options=genai_types.HttpOptions(base_url=f"{base}/google-ai-studio"),
        )
        reply = gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert reply.text

        # The generated operator token opens the admin surface's auth check.
        assert saved["admin_token"].startswith("tgop_")
        assert httpx.get(f"{url}/readyz").json()["sandbox"] is True

    async def balance_and_ledger() -> tuple[int, int]:
        store = Store(settings.database.url)
        try:
            account = await account_repo.get_account(store, saved["account_id"])
            assert account is not None
            return account.balance_nanos, await ledger_repo.ledger_sum(store, account.id)
        finally:
            await store.close()

    balance, ledger_total = asyncio.run(balance_and_ledger())
    assert balance == ledger_total
    # $10 of sandbox credits, less what the three calls above cost.
    assert 9 * 10**9 < balance < 10 * 10**9


def test_second_start_reuses_the_same_credentials(tmp_path: Path) -> None:
    settings = sandbox_settings(tmp_path)
    with serve_in_thread(create_app(settings)):
        first = (tmp_path / "data" / "sandbox-credentials.json").read_text()
    with serve_in_thread(create_app(settings)) as url:
        second = (tmp_path / "data" / "sandbox-credentials.json").read_text()
        saved = json.loads(second)
        client = openai.OpenAI(
            api_key=saved["token"],
            base_url=f"{url}/v1/{saved['account_id']}/default/openai",
            max_retries=0,
        )
        assert client.models.list().data
    assert first == second
