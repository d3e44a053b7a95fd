"""Sealing stored keys, the data plane's cache of them (on SQLite and PostgreSQL), the credential
headers, and the operator's ZDR targets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from tollgate.credentials import credential_options, managed_targets
from tollgate.errors import InvalidRequest, ServiceUnavailable
from tollgate.features.stored_keys import SecretBox, StoredKeys, Unsealable, secret_preview
from tollgate.gateway_config import default_gateway_config
from tollgate.settings import SettingsError, load_settings
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import gateways as gateway_repo
from tollgate.store import provider_configs as config_repo
from tollgate.store.migrate import migrate

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.urlsafe_b64encode(b"\xfb" * 32).decode()  # url-safe alphabet accepted too


# --- sealing ----------------------------------------------------------------------------------


def test_seal_and_open_round_trip_bound_to_their_row() -> None:
    box = SecretBox(KEY_A)
    sealed = box.seal("sk-secret-value", "acct", "gw", "id1")
    assert "sk-secret" not in sealed and sealed.startswith("v1.")
    assert box.seal("sk-secret-value", "acct", "gw", "id1") != sealed  # a fresh nonce
    assert box.open(sealed, box.key_id, "acct", "gw", "id1") == "sk-secret-value"
    with pytest.raises(Unsealable, match="altered or corrupt"):
        box.open(sealed, box.key_id, "acct", "gw", "id2")  # copied into another row
    with pytest.raises(Unsealable, match="altered or corrupt"):
        box.open(sealed[:-2] + "AA", box.key_id, "acct", "gw", "id1")


def test_another_master_key_is_reported_as_such() -> None:
    sealed = SecretBox(KEY_A).seal("sk", "a", "g", "i")
    other = SecretBox(KEY_B)
    with pytest.raises(Unsealable, match="another master key"):
        other.open(sealed, SecretBox(KEY_A).key_id, "a", "g", "i")
    with pytest.raises(Unsealable, match="operator.master_key"):
        SecretBox(None).open(sealed, SecretBox(KEY_A).key_id, "a", "g", "i")


def test_sealing_without_a_master_key_names_the_setting() -> None:
    with pytest.raises(ServiceUnavailable, match="TOLLGATE_OPERATOR__MASTER_KEY"):
        SecretBox(None).seal("sk", "a")


def test_previews_hide_most_of_a_key() -> None:
    assert secret_preview("sk-proj-0123456789abcdef") == "sk-...cdef"
    assert secret_preview("short") == "********"


@pytest.mark.parametrize("value", ["too-short", base64.b64encode(b"x" * 16).decode(), "!!!"])
def test_a_bad_master_key_stops_start_up_without_echoing_it(value: str) -> None:
    with pytest.raises(SettingsError, match="operator.master_key: expected 32 random bytes") as e:
        load_settings(env={"TOLLGATE_OPERATOR__MASTER_KEY": value})
    assert value not in str(e.value)


# --- the cache on a real store ----------------------------------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


async def _put(
    store: Store, keys: StoredKeys, account: str, gateway: str, provider: str, alias: str,
    secret: str, default: bool = False,
) -> str:  # fmt: skip
    config_id = f"{provider}-{alias}"
    await config_repo.insert_provider_config(
        store,
        account,
        gateway,
        config_id,
        {
            "provider_slug": provider,
            "alias": alias,
            "default_config": default,
            "ciphertext": keys.box.seal(secret, account, gateway, config_id),
            "key_id": keys.box.key_id,
            "secret_id": config_id,
            "secret_preview": secret_preview(secret),
            "rate_limit": None,
            "rate_limit_period": 60.0,
        },
    )
    return config_id


async def test_find_defaults_aliases_and_invalidation(store: Store) -> None:
    account = (await account_repo.create_account(store, "t")).id
    await gateway_repo.insert_gateway(
        store, account, "gw", default_gateway_config(), is_default=False
    )
    keys = StoredKeys(store, KEY_A, ttl=3600)  # only invalidation refreshes it here

    assert await keys.find(account, "gw", "openai", None) is None
    with pytest.raises(InvalidRequest) as unknown:
        await keys.find(account, "gw", "openai", "team")
    assert unknown.value.param == "cf-aig-byok-alias" and "It has none" in unknown.value.message

    await _put(store, keys, account, "gw", "openai", "default", "sk-default")
    assert await keys.find(account, "gw", "openai", None) is None  # cached: nothing stored
    keys.invalidate(account, "gw")
    assert await keys.find(account, "gw", "openai", None) == "sk-default"
    assert await keys.find(account, "gw", "anthropic", None) is None

    await _put(store, keys, account, "gw", "openai", "team", "sk-team", default=True)
    keys.invalidate(account, "gw")
    assert await keys.find(account, "gw", "openai", None) == "sk-team"
    assert await keys.find(account, "gw", "openai", "default") == "sk-default"
    with pytest.raises(InvalidRequest, match="Stored aliases: default, team"):
        await keys.find(account, "gw", "openai", "nobody")

    # a key sealed under another master key is refused, never used as something else
    other = StoredKeys(store, KEY_B, ttl=3600)
    with pytest.raises(ServiceUnavailable, match="another master key") as unusable:
        await other.find(account, "gw", "openai", None)
    assert "sk-team" not in unusable.value.message


async def test_deleting_the_gateway_deletes_its_keys(store: Store) -> None:
    account = (await account_repo.create_account(store, "t")).id
    await gateway_repo.insert_gateway(
        store, account, "gw", default_gateway_config(), is_default=False
    )
    keys = StoredKeys(store, KEY_A)
    await _put(store, keys, account, "gw", "openai", "default", "sk-default")
    await gateway_repo.delete_gateway(store, account, "gw")
    assert await config_repo.gateway_configs(store, account, "gw") == []


# --- request headers and ZDR targets ------------------------------------------------------------


def test_credential_headers_are_read_or_refused_by_name() -> None:
    options = credential_options(
        [
            (b"cf-aig-byok-alias", b"team-b"),
            (b"cf-aig-no-wholesale", b"True"),
            (b"cf-aig-zdr", b"false"),
        ]
    )
    assert (options.alias, options.no_wholesale, options.zdr) == ("team-b", True, False)
    empty = credential_options([])
    assert (empty.alias, empty.no_wholesale, empty.zdr) == (None, False, None)
    for name, value in (
        (b"cf-aig-byok-alias", b"a/b"),
        (b"cf-aig-byok-alias", b"x" * 65),
        (b"cf-aig-no-wholesale", b"1"),
        (b"cf-aig-zdr", b"on"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            credential_options([(name, value)])
        assert refused.value.param == name.decode() and refused.value.code == "invalid_header"


def test_managed_targets_carry_each_providers_zdr_variant() -> None:
    settings = load_settings(
        env={
            "TOLLGATE_PROVIDERS__OPENAI__API_KEY": "sk-std",
            "TOLLGATE_PROVIDERS__OPENAI__ZDR_BASE_URL": "https://zdr.example/v1/",
            "TOLLGATE_PROVIDERS__OPENAI__ZDR_API_KEY": "sk-zdr",
            "TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY": "ant-std",
            "TOLLGATE_PROVIDERS__ANTHROPIC__ZDR_API_KEY": "ant-zdr",
            "TOLLGATE_PROVIDERS__GROQ__API_KEY": "gsk",
        }
    )
    targets = managed_targets(settings)
    openai_zdr = targets["openai"].zdr
    assert openai_zdr is not None
    assert (openai_zdr.base_url, openai_zdr.api_key) == ("https://zdr.example/v1", "sk-zdr")
    assert (targets["openai"].base_url, targets["openai"].api_key) == (
        "https://api.openai.com/v1",
        "sk-std",
    )
    anthropic_zdr = targets["anthropic"].zdr
    assert anthropic_zdr is not None
    assert (anthropic_zdr.base_url, anthropic_zdr.api_key) == (
        "https://api.anthropic.com",
        "ant-zdr",
    )
    assert targets["groq"].zdr is None
