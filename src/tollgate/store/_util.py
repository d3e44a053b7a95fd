"""Small helpers shared by the repository modules."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def new_id(nbytes: int = 16) -> str:
    """A random lowercase-hex id (32 characters by default, the account id format)."""
    return secrets.token_hex(nbytes)
