"""Cache events (tollgate/store/cache_events.py, tollgate/cache_events.py), on both engines.

Every store write that changes something a gateway process caches appends its event in the same
transaction; a write that changes nothing appends none. Ids become visible in order (the poller
reads `id > last`): AUTOINCREMENT on SQLite, a lock held to the commit on PostgreSQL. The poller
drops what each event names from a real `Services`' caches, skips its own process's events and
kinds it does not know, and catches up after the database was unreachable. The end-to-end
test, with real processes, is tests/e2e/test_cross_process_invalidation.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.tcp_proxy import PG_HOST, PG_PORT, TcpProxy
from tollgate.api.auth import mint_token
from tollgate.cache_events import CacheEventPoller
from tollgate.errors import AuthenticationFailed, NotFound
from tollgate.gateway_config import default_gateway_config
from tollgate.services import Services
from tollgate.settings import Settings
from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store import cache_events as events_repo
from tollgate.store import custom_providers as custom_repo
from tollgate.store import gateways as gateway_repo
from tollgate.store import limits as limit_repo
from tollgate.store import payments as payment_repo
from tollgate.store import provider_configs as config_repo
from tollgate.store import tokens as token_repo
from tollgate.store.cache_events import CacheEventKind
from tollgate.store.migrate import migrate

NEVER = 3600.0  # a poll interval for pollers the test steps by hand


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in the test's directory, or the session's PostgreSQL database: every test here
    reads only the events it wrote itself (after `latest_event_id`), so they can share it, and
    none pays for a database of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def events_since(store: Store, last: int) -> list[tuple[str, str]]:
    return [(e.kind, e.key) for e in await events_repo.events_after(store, last)]


async def new_token(store: Store, account_id: str) -> tuple[str, str]:
    minted = mint_token()
    await token_repo.insert_token(
        store,
        token_id=minted.token_id,
        account_id=account_id,
        name="t",
        token_hash=minted.token_hash,
        permissions=frozenset({"run"}),
        expires_at=None,
    )
    return minted.token, minted.token_id


async def test_every_cached_kind_of_change_appends_its_event(
    store: Store, account: Account
) -> None:
    a = account.id
    last = await events_repo.latest_event_id(store)
    _, token_id = await new_token(store, a)
    await token_repo.revoke_token(store, a, token_id)
    await account_repo.set_account_status(store, a, "disabled")
    await gateway_repo.insert_gateway(store, a, "gw", default_gateway_config(), is_default=False)
    await gateway_repo.update_gateway(store, a, "gw", {**default_gateway_config(), "zdr": True})
    fields = {"slug": "old", "name": "n", "base_url": "https://example.com"}
    provider = await custom_repo.insert_custom_provider(store, a, fields)
    await custom_repo.update_custom_provider(store, a, provider.id, {"slug": "new"})
    await custom_repo.delete_custom_provider(store, a, provider.id)
    stored_key = {
        "provider_slug": "openai",
        "alias": "default",
        "secret_id": "s",
        "secret_preview": "sk-...",
        "ciphertext": "c",
        "key_id": "k",
    }
    await config_repo.insert_provider_config(store, a, "gw", "cfg", stored_key)
    await config_repo.update_provider_config(store, a, "gw", "cfg", {"alias": "other"})
    await config_repo.delete_provider_config(store, a, "gw", "cfg")
    await limit_repo.set_account_limit(store, a, 10**9, "daily", "fixed")
    await limit_repo.delete_account_limit(store, a)
    now = datetime.now(UTC)
    await payment_repo.put_auto_config(
        store, a, threshold_cents=500, amount_cents=1000, monthly_cap_cents=None, now=now
    )
    await payment_repo.delete_auto_config(store, a)
    await gateway_repo.delete_gateway(store, a, "gw")
    gw, cp, keys = f"{a}/gw", f"{a}/", f"{a}/gw"
    assert await events_since(store, last) == [
        ("token", token_id),
        ("account", a),
        ("gateway", gw),
        ("gateway", gw),
        ("custom_provider", cp + "old"),
        ("custom_provider", cp + "old"),
        ("custom_provider", cp + "new"),
        ("custom_provider", cp + "new"),
        ("stored_keys", keys),
        ("stored_keys", keys),
        ("stored_keys", keys),
        ("account_limit", a),
        ("account_limit", a),
        ("auto_topup", a),
        ("auto_topup", a),
        ("gateway", gw),
    ]


async def test_a_write_that_changes_nothing_appends_nothing(store: Store, account: Account) -> None:
    a = account.id
    last = await events_repo.latest_event_id(store)
    assert await token_repo.revoke_token(store, a, "0" * 16) is None
    assert await account_repo.set_account_status(store, "f" * 32, "disabled") is None
    assert await gateway_repo.update_gateway(store, a, "missing", {}) is None
    assert await gateway_repo.delete_gateway(store, a, "missing") is None
    assert await custom_repo.delete_custom_provider(store, a, "missing") is None
    assert await config_repo.delete_provider_config(store, a, "gw", "missing") is None
    assert await limit_repo.delete_account_limit(store, a) is False
    assert await payment_repo.delete_auto_config(store, a) is False
    assert await events_since(store, last) == []


async def test_ids_are_never_reused_after_pruning_empties_the_table(
    store: Store, account: Account
) -> None:
    """A poller at `last` would skip an event given an id at or below it."""
    await account_repo.set_account_status(store, account.id, "disabled")
    newest = await events_repo.latest_event_id(store)
    assert await events_repo.prune_events(store, datetime.now(UTC) + timedelta(minutes=1)) >= 1
    assert await events_repo.latest_event_id(store) == 0  # empty
    await account_repo.set_account_status(store, account.id, "active")
    [event] = await events_repo.events_after(store, newest)
    assert event.id > newest and event.kind == "account"


async def test_pruning_keeps_recent_events(store: Store, account: Account) -> None:
    last = await events_repo.latest_event_id(store)
    await account_repo.set_account_status(store, account.id, "disabled")
    assert await events_repo.prune_events(store, datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await events_since(store, last) == [("account", account.id)]


async def test_postgresql_publishers_commit_in_id_order(database_url: str) -> None:
    """While a publishing transaction is open, a later one waits at its publish, so no reader
    can see a later id before an earlier one commits."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: its ids commit in order by construction")
    store = Store(database_url)
    await migrate(store)
    try:
        last = await events_repo.latest_event_id(store)
        first_published = asyncio.Event()
        release_first = asyncio.Event()

        async def first() -> None:
            async with store.write() as conn:
                await events_repo.publish(store, conn, CacheEventKind.TOKEN, "first")
                first_published.set()
                await release_first.wait()

        async def second() -> None:
            async with store.write() as conn:
                await events_repo.publish(store, conn, CacheEventKind.TOKEN, "second")

        held = asyncio.create_task(first())
        await first_published.wait()
        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held at its publish by the open first transaction
        assert await events_since(store, last) == []
        release_first.set()
        await asyncio.gather(held, waiting)
        assert await events_since(store, last) == [("token", "first"), ("token", "second")]
    finally:
        await store.close()


# --- the poller, on a real Services ----------------------------------------------------------


@pytest.fixture
async def services(
    store: Store, make_settings: Callable[..., Settings], database_url: str
) -> AsyncIterator[Services]:
    built = Services.build(make_settings({"TOLLGATE_DATABASE_URL": database_url}), store)
    yield built
    await built.topups.aclose()


async def test_the_poller_drops_what_another_process_changed(
    store: Store, account: Account, services: Services, database_url: str
) -> None:
    token, token_id = await new_token(store, account.id)
    poller = await CacheEventPoller(services, interval=NEVER).start()
    try:
        assert (await services.tokens.verify(token)).token_id == token_id  # now cached
        before = await services.gateways.resolve(account.id, "default")
        other_process = Store(database_url)  # the change is made elsewhere
        try:
            await token_repo.revoke_token(other_process, account.id, token_id)
            changed = {**before.config, "zdr": True}
            await gateway_repo.update_gateway(other_process, account.id, "default", changed)
        finally:
            await other_process.close()
        # Still cached: nothing told this process yet.
        assert (await services.tokens.verify(token)).token_id == token_id
        assert (await services.gateways.resolve(account.id, "default")).config == before.config
        assert await poller.poll_once() >= 2
        with pytest.raises(AuthenticationFailed):
            await services.tokens.verify(token)
        assert (await services.gateways.resolve(account.id, "default")).config["zdr"] is True
        assert await poller.poll_once() == 0  # nothing new
    finally:
        await poller.aclose()


async def test_the_poller_applies_only_other_processes_new_events_of_known_kinds(
    store: Store, account: Account, services: Services, database_url: str
) -> None:
    """Skipped: what was written before it started (nothing was cached then), what its own
    store wrote (the change's code dropped its entries at once), kinds it does not know."""
    other_process = Store(database_url)
    try:
        await account_repo.set_account_status(other_process, account.id, "disabled")  # before
        poller = await CacheEventPoller(services, interval=NEVER).start()
        try:
            async with other_process.write() as conn:  # as a newer version might write
                await conn.execute(
                    events_repo.cache_events.insert().values(
                        kind="from_the_future",
                        key="x",
                        origin=other_process.origin,
                        created_at=datetime.now(UTC),
                    )
                )
            config = default_gateway_config()
            await gateway_repo.insert_gateway(store, account.id, "own", config, is_default=False)
            await gateway_repo.insert_gateway(
                other_process, account.id, "theirs", config, is_default=False
            )
            assert await poller.poll_once() == 1  # "theirs"
            assert poller.applied == 1
            assert poller.last_id == await events_repo.latest_event_id(store)
        finally:
            await poller.aclose()
    finally:
        await other_process.close()


async def test_the_poller_catches_up_after_the_database_was_unreachable(
    store: Store,
    account: Account,
    database_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    """The poller's process reaches PostgreSQL through a proxy that the test cuts: its reads
    fail (counted, never fatal), a change is made meanwhile by another process, and once the
    database is back the poller applies it (the table kept it)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a database outage is played by cutting a TCP proxy: PostgreSQL only")
    proxy = TcpProxy()
    proxy.forward()
    proxied_url = database_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    proxied = Store(proxied_url)
    services = Services.build(make_settings({"TOLLGATE_DATABASE_URL": proxied_url}), proxied)
    poller = await CacheEventPoller(services, interval=0.02).start()
    try:
        with pytest.raises(NotFound):
            await services.gateways.resolve(account.id, "late")  # cached as missing
        proxy.cut()
        failures = poller.failures
        for _ in range(500):
            if poller.failures >= failures + 2:
                break
            await asyncio.sleep(0.01)
        assert poller.failures >= failures + 2
        await gateway_repo.insert_gateway(  # through `store`, not the proxy
            store, account.id, "late", default_gateway_config(), is_default=False
        )
        proxy.forward()
        for _ in range(500):
            if poller.applied:
                break
            await asyncio.sleep(0.01)
        assert poller.applied == 1
        assert (await services.gateways.resolve(account.id, "late")).id == "late"
    finally:
        await poller.aclose()
        await services.topups.aclose()
        await proxied.close()
        proxy.close()
