"""Plain values the store hands out. Frozen, so nothing downstream mutates a cached row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    status: str
    balance_nanos: int
    held_nanos: int
    created_at: datetime
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    account_id: str
    name: str
    token_hash: str
    permissions: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    account_id: str
    id: str
    config: dict[str, Any]
    is_default: bool
    created_at: datetime
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    id: str
    account_id: str
    kind: str
    amount_nanos: int
    balance_after_nanos: int
    note: str
    reference: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
