"""Repository functions round-trip on both engines; every datetime comes back tz-aware UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store import gateways as gateway_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import tokens as token_repo
from tollgate.store.gateways import GatewayExists
from tollgate.store.ledger import AccountMissing


def assert_utc(*values: datetime | None) -> None:
    for value in values:
        assert value is not None
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


# --- accounts -------------------------------------------------------------------------------------


async def test_account_round_trips(store: Store) -> None:
    created = await account_repo.create_account(store, "Acme")
    assert re.fullmatch(r"[0-9a-f]{32}", created.id)
    found = await account_repo.get_account(store, created.id)
    assert found == created
    assert (found.status, found.balance_nanos, found.held_nanos) == ("active", 0, 0)
    assert_utc(found.created_at, found.modified_at)
    assert abs(found.created_at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_account_with_a_chosen_id(store: Store) -> None:
    chosen = "0123456789abcdef0123456789abcdef"
    await account_repo.create_account(store, "fixed", account_id=chosen)
    found = await account_repo.get_account(store, chosen)
    assert found is not None and found.name == "fixed"


async def test_unknown_account_is_none(store: Store) -> None:
    assert await account_repo.get_account(store, "f" * 32) is None
    assert await account_repo.set_account_status(store, "f" * 32, "disabled") is None


async def test_accounts_list_in_creation_order_with_total(store: Store) -> None:
    made = [await account_repo.create_account(store, f"a{i}") for i in range(5)]
    first = await account_repo.list_accounts(store, offset=0, limit=2)
    rest = await account_repo.list_accounts(store, offset=2, limit=10)
    assert first.total == rest.total == 5
    assert [a.id for a in first.items + rest.items] == [a.id for a in made]
    assert (await account_repo.list_accounts(store, offset=5, limit=10)).items == []


async def test_account_status_changes_and_is_checked(store: Store, account: Account) -> None:
    disabled = await account_repo.set_account_status(store, account.id, "disabled")
    assert disabled is not None and disabled.status == "disabled"
    assert disabled.modified_at >= account.modified_at
    assert_utc(disabled.modified_at)
    enabled = await account_repo.set_account_status(store, account.id, "active")
    assert enabled is not None and enabled.status == "active"
    with pytest.raises(Exception, match="(?i)constraint|check"):
        await account_repo.set_account_status(store, account.id, "frozen")


# --- tokens ---------------------------------------------------------------------------------------


async def _token(store: Store, account_id: str, token_id: str, **kwargs: object) -> None:
    await token_repo.insert_token(
        store,
        token_id=token_id,
        account_id=account_id,
        name=str(kwargs.get("name", "t")),
        token_hash="a" * 64,
        permissions=kwargs.get("permissions", frozenset({"run"})),  # type: ignore[arg-type]
        expires_at=kwargs.get("expires_at"),  # type: ignore[arg-type]
    )


async def test_token_round_trips_with_permissions_and_expiry(
    store: Store, account: Account
) -> None:
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    await _token(
        store,
        account.id,
        "0123456789abcdef",
        permissions=frozenset({"read", "run"}),
        expires_at=expires,
    )
    found = await token_repo.get_token(store, "0123456789abcdef")
    assert found is not None
    assert found.account_id == account.id
    assert found.permissions == frozenset({"read", "run"})
    assert found.expires_at == expires
    assert found.revoked_at is None and found.last_used_at is None
    assert_utc(found.created_at, found.expires_at)


async def test_expiry_in_another_zone_is_stored_as_the_same_instant(
    store: Store, account: Account
) -> None:
    plus_two = datetime(2031, 1, 1, 12, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    await _token(store, account.id, "1111111111111111", expires_at=plus_two)
    found = await token_repo.get_token(store, "1111111111111111")
    assert found is not None and found.expires_at == plus_two
    assert found.expires_at.utcoffset() == timedelta(0)


async def test_naive_datetimes_are_refused(store: Store, account: Account) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        await _token(store, account.id, "2222222222222222", expires_at=datetime(2031, 1, 1))
    assert await token_repo.get_token(store, "2222222222222222") is None


async def test_tokens_list_per_account(store: Store, account: Account) -> None:
    other = await account_repo.create_account(store, "other")
    await _token(store, account.id, "aaaaaaaaaaaaaaaa", name="first")
    await _token(store, account.id, "bbbbbbbbbbbbbbbb", name="second")
    await _token(store, other.id, "cccccccccccccccc")
    listed = await token_repo.list_tokens(store, account.id)
    assert [t.name for t in listed] == ["first", "second"]
    assert [t.id for t in await token_repo.list_tokens(store, other.id)] == ["cccccccccccccccc"]


async def test_revoke_keeps_the_first_time_and_never_touches_another_account(
    store: Store, account: Account
) -> None:
    other = await account_repo.create_account(store, "other")
    await _token(store, account.id, "dddddddddddddddd")
    assert await token_repo.revoke_token(store, other.id, "dddddddddddddddd") is None
    untouched = await token_repo.get_token(store, "dddddddddddddddd")
    assert untouched is not None and untouched.revoked_at is None

    first = await token_repo.revoke_token(store, account.id, "dddddddddddddddd")
    assert first is not None and first.revoked_at is not None
    assert_utc(first.revoked_at)
    again = await token_repo.revoke_token(store, account.id, "dddddddddddddddd")
    assert again is not None and again.revoked_at == first.revoked_at
    assert await token_repo.revoke_token(store, account.id, "eeeeeeeeeeeeeeee") is None


async def test_operator_tokens_round_trip(store: Store) -> None:
    assert await token_repo.count_operator_tokens(store) == 0
    await token_repo.insert_operator_token(store, "ffffffffffffffff", "b" * 64)
    assert await token_repo.get_operator_token_hash(store, "ffffffffffffffff") == "b" * 64
    assert await token_repo.get_operator_token_hash(store, "0000000000000000") is None
    assert await token_repo.count_operator_tokens(store) == 1


# --- gateways -------------------------------------------------------------------------------------


async def test_gateway_round_trips(store: Store, account: Account) -> None:
    config = {"cache_ttl": 60, "collect_logs": True, "nested": {"a": [1, 2]}}
    made = await gateway_repo.insert_gateway(store, account.id, "prod", config, is_default=False)
    found = await gateway_repo.get_gateway(store, account.id, "prod")
    assert found is not None
    assert found.config == config and found.is_default is False
    assert found.created_at == made.created_at
    assert_utc(found.created_at, found.modified_at)

    updated = await gateway_repo.update_gateway(store, account.id, "prod", {"cache_ttl": 5})
    assert updated is not None and updated.config == {"cache_ttl": 5}
    assert updated.modified_at >= found.modified_at
    deleted = await gateway_repo.delete_gateway(store, account.id, "prod")
    assert deleted is not None and deleted.id == "prod"
    assert await gateway_repo.get_gateway(store, account.id, "prod") is None
    assert await gateway_repo.update_gateway(store, account.id, "prod", {}) is None
    assert await gateway_repo.delete_gateway(store, account.id, "prod") is None


async def test_gateway_insert_conflicts_within_an_account_only(
    store: Store, account: Account
) -> None:
    other = await account_repo.create_account(store, "other")
    await gateway_repo.insert_gateway(store, account.id, "dup", {"v": 1}, is_default=False)
    with pytest.raises(GatewayExists):
        await gateway_repo.insert_gateway(store, account.id, "dup", {"v": 2}, is_default=False)
    kept = await gateway_repo.get_gateway(store, account.id, "dup")
    assert kept is not None and kept.config == {"v": 1}
    # The same id in another account is a different gateway.
    await gateway_repo.insert_gateway(store, other.id, "dup", {"v": 3}, is_default=False)


async def test_gateways_list_newest_first_with_search_and_total(
    store: Store, account: Account
) -> None:
    for gateway_id in ("alpha", "beta", "al_pha", "gamma"):
        await gateway_repo.insert_gateway(store, account.id, gateway_id, {}, is_default=False)
    page = await gateway_repo.list_gateways(store, account.id, offset=0, limit=2)
    assert page.total == 4 and len(page.items) == 2
    everything = await gateway_repo.list_gateways(store, account.id, limit=10)
    assert {g.id for g in everything.items} == {"alpha", "beta", "al_pha", "gamma"}
    stamps = [g.created_at for g in everything.items]
    assert stamps == sorted(stamps, reverse=True)
    found = await gateway_repo.list_gateways(store, account.id, search="al")
    assert {g.id for g in found.items} == {"alpha", "al_pha"}
    # `_` is a literal underscore, not a LIKE wildcard.
    literal = await gateway_repo.list_gateways(store, account.id, search="l_p")
    assert [g.id for g in literal.items] == ["al_pha"] and literal.total == 1


async def test_ensure_gateway_creates_once(store: Store, account: Account) -> None:
    first = await gateway_repo.ensure_gateway(
        store, account.id, "default", {"a": 1}, is_default=True
    )
    second = await gateway_repo.ensure_gateway(
        store, account.id, "default", {"a": 2}, is_default=True
    )
    assert first.is_default and second.config == {"a": 1}


# --- ledger ---------------------------------------------------------------------------------------


async def test_append_entry_updates_the_balance_and_records_the_running_sum(
    store: Store, account: Account
) -> None:
    grant, created = await ledger_repo.append_entry(
        store, account.id, kind="grant", amount_nanos=5_000_000_000, note="hello"
    )
    assert created
    usage, _ = await ledger_repo.append_entry(store, account.id, kind="usage", amount_nanos=-1_234)
    assert (grant.balance_after_nanos, usage.balance_after_nanos) == (5_000_000_000, 4_999_998_766)
    assert usage.seq > grant.seq
    assert grant.note == "hello" and grant.reference is None
    assert_utc(grant.created_at, usage.created_at)
    found = await account_repo.get_account(store, account.id)
    assert found is not None and found.balance_nanos == 4_999_998_766
    assert await ledger_repo.ledger_sum(store, account.id) == found.balance_nanos


async def test_ledger_reference_applies_once(store: Store, account: Account) -> None:
    first, created = await ledger_repo.append_entry(
        store, account.id, kind="grant", amount_nanos=100, reference="order-1"
    )
    again, created_again = await ledger_repo.append_entry(
        store, account.id, kind="grant", amount_nanos=100, reference="order-1"
    )
    assert created and not created_again
    assert again == first
    found = await account_repo.get_account(store, account.id)
    assert found is not None and found.balance_nanos == 100
    assert await ledger_repo.find_by_reference(store, account.id, "order-1") == first
    assert await ledger_repo.find_by_reference(store, account.id, "order-2") is None


async def test_the_same_reference_in_another_account_is_independent(
    store: Store, account: Account
) -> None:
    other = await account_repo.create_account(store, "other")
    _, a = await ledger_repo.append_entry(
        store, account.id, kind="grant", amount_nanos=1, reference="r"
    )
    _, b = await ledger_repo.append_entry(
        store, other.id, kind="grant", amount_nanos=1, reference="r"
    )
    assert a and b


async def test_append_to_a_missing_account_changes_nothing(store: Store) -> None:
    with pytest.raises(AccountMissing):
        await ledger_repo.append_entry(store, "9" * 32, kind="grant", amount_nanos=1)
    assert await ledger_repo.list_entries(store, "9" * 32) == []


async def test_unknown_entry_kind_is_refused_and_rolled_back(
    store: Store, account: Account
) -> None:
    with pytest.raises(Exception, match="(?i)constraint|check"):
        await ledger_repo.append_entry(store, account.id, kind="gift", amount_nanos=5)
    found = await account_repo.get_account(store, account.id)
    assert found is not None and found.balance_nanos == 0
    assert await ledger_repo.list_entries(store, account.id) == []


async def test_list_entries_newest_first_and_pages_by_seq(store: Store, account: Account) -> None:
    for amount in range(1, 6):
        await ledger_repo.append_entry(store, account.id, kind="grant", amount_nanos=amount)
    newest = await ledger_repo.list_entries(store, account.id, limit=2)
    assert [e.amount_nanos for e in newest] == [5, 4]
    older = await ledger_repo.list_entries(store, account.id, limit=10, before_seq=newest[-1].seq)
    assert [e.amount_nanos for e in older] == [3, 2, 1]
    assert [e.balance_after_nanos for e in older] == [6, 3, 1]
