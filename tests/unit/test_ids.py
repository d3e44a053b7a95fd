"""Ids in URLs are checked whole: no trailing newline or other leftovers slip through."""

from __future__ import annotations

import pytest

from tollgate.errors import InvalidRequest
from tollgate.gateway_config import validate_gateway_id
from tollgate.ids import ACCOUNT_ID, GATEWAY_ID


@pytest.mark.parametrize("value", ["a" * 32 + "\n", "A" * 32, "a" * 31, "a" * 33, " " + "a" * 31])
def test_account_ids_must_be_exactly_32_lowercase_hex(value: str) -> None:
    assert ACCOUNT_ID.fullmatch(value) is None


@pytest.mark.parametrize("value", ["abc\n", "ABC", "a b", "", "x" * 65, "a/b"])
def test_gateway_ids_refuse_leftovers(value: str) -> None:
    assert GATEWAY_ID.fullmatch(value) is None
    with pytest.raises(InvalidRequest):
        validate_gateway_id(value)
