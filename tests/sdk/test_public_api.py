"""The SDK's public surface: `__all__` is exactly the public names (guarded, as httpx does), and
every public name, method and property carries a docstring."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import is_typeddict

import tollgate.sdk as sdk


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(sdk).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert sorted(sdk.__all__) == sorted(public)
    assert sdk.__all__ == sorted(sdk.__all__)


def test_every_public_name_and_method_has_a_docstring() -> None:
    assert sdk.__doc__
    missing = []
    for name in sdk.__all__:
        value = getattr(sdk, name)
        if not inspect.getdoc(value):
            missing.append(name)
        if not inspect.isclass(value) or is_typeddict(value):
            continue
        for attribute in dir(value):  # inherited members are public too
            owner = next(c for c in value.__mro__ if attribute in vars(c))
            if attribute.startswith("_") or owner.__module__ == "builtins":
                continue
            member = vars(owner)[attribute]
            if (callable(member) or isinstance(member, property)) and not member.__doc__:
                missing.append(f"{name}.{attribute}")
    assert missing == []


def test_clients_expose_only_their_documented_api() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(sdk.AI) == {"run", "gateway", "models", "close"}
    assert public(sdk.AsyncAI) == {"run", "gateway", "models", "aclose"}
    assert (
        public(sdk.Gateway)
        == public(sdk.AsyncGateway)
        == {
            "run",
            "get_log",
            "patch_log",
            "get_url",
        }
    )
    client = sdk.AI("0" * 32, "tg_x")
    assert {"account_id", "base_url", "timeout", "last_log_id"} <= set(vars(client))
    client.close()


def test_the_submodules_document_themselves() -> None:
    from tollgate.sdk import _core, _options, _streams, aio, client, errors, gateway

    for module in (_core, _options, _streams, aio, client, errors, gateway):
        assert module.__doc__, module.__name__
