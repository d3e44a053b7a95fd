"""The ledger invariant under concurrency, on both engines:

`accounts.balance_nanos == sum(ledger_entries.amount_nanos)`, and each entry's `balance_after` is
the running sum in `seq` order, however many writers race on one account.
"""

from __future__ import annotations

import asyncio

from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store import gateways as gateway_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.migrate import migrate


async def assert_ledger_invariant(store: Store, account_id: str) -> int:
    found = await account_repo.get_account(store, account_id)
    assert found is not None
    assert await ledger_repo.ledger_sum(store, account_id) == found.balance_nanos
    entries = list(reversed(await ledger_repo.list_entries(store, account_id, limit=10_000)))
    running = 0
    for entry in entries:
        running += entry.amount_nanos
        assert entry.balance_after_nanos == running, entry
    assert running == found.balance_nanos
    return found.balance_nanos


async def test_concurrent_grants_keep_balance_equal_to_ledger_sum(
    store: Store, account: Account
) -> None:
    amounts = [1_000_000 * (i + 1) for i in range(50)]
    results = await asyncio.gather(
        *(
            ledger_repo.append_entry(store, account.id, kind="grant", amount_nanos=amount)
            for amount in amounts
        )
    )
    assert all(created for _, created in results)
    assert len({entry.seq for entry, _ in results}) == 50
    assert await assert_ledger_invariant(store, account.id) == sum(amounts)


async def test_concurrent_credits_and_debits_keep_the_invariant(
    store: Store, account: Account
) -> None:
    amounts = [700 if i % 2 else -300 for i in range(50)]
    await asyncio.gather(
        *(
            ledger_repo.append_entry(
                store, account.id, kind="grant" if amount > 0 else "usage", amount_nanos=amount
            )
            for amount in amounts
        )
    )
    assert await assert_ledger_invariant(store, account.id) == sum(amounts)


async def test_concurrent_grants_from_separate_stores(database_url: str, account: Account) -> None:
    """Separate engines stand in for separate processes sharing one database."""
    stores = [Store(database_url) for _ in range(5)]
    try:
        await asyncio.gather(
            *(
                ledger_repo.append_entry(
                    stores[i % 5], account.id, kind="grant", amount_nanos=i + 1
                )
                for i in range(50)
            )
        )
        assert await assert_ledger_invariant(stores[0], account.id) == sum(range(1, 51))
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_grants_with_one_reference_credit_once(
    store: Store, account: Account
) -> None:
    results = await asyncio.gather(
        *(
            ledger_repo.append_entry(
                store, account.id, kind="grant", amount_nanos=5_000, reference="invoice-42"
            )
            for _ in range(20)
        )
    )
    assert sum(created for _, created in results) == 1
    assert len({entry.id for entry, _ in results}) == 1
    assert await assert_ledger_invariant(store, account.id) == 5_000


async def test_concurrent_default_gateway_creation_yields_one_gateway(
    store: Store, account: Account
) -> None:
    results = await asyncio.gather(
        *(
            gateway_repo.ensure_gateway(store, account.id, "default", {"n": i}, is_default=True)
            for i in range(20)
        )
    )
    assert len({(g.id, g.created_at) for g in results}) == 1
    assert (await gateway_repo.list_gateways(store, account.id)).total == 1


async def test_migrate_is_a_no_op_on_a_live_store(store: Store) -> None:
    assert await migrate(store) == []
