"""SDK tests run against a live gateway and simulator: the end-to-end fixtures, reused as they
are (`sim`, `start_gateway`, `gateway`), plus small helpers to shape an account for a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim, gateway, sim, start_gateway  # noqa: F401
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tollgate.sdk import AI, AsyncAI, NotFound

T = TypeVar("T")
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def ai(gateway: Gateway) -> Iterator[AI]:  # noqa: F811
    """A sync client of the gateway's seeded account ($100 of credits, every permission)."""
    with AI(gateway.account.account_id, gateway.account.token, gateway.url) as client:
        yield client


@pytest.fixture
async def aio(gateway: Gateway) -> AsyncIterator[AsyncAI]:  # noqa: F811
    """The async client of the same account."""
    async with AsyncAI(gateway.account.account_id, gateway.account.token, gateway.url) as client:
        yield client


def create_gateway(gateway: Gateway, gateway_id: str, **fields: Any) -> None:  # noqa: F811
    """Create a gateway in the seeded account through the management API."""
    response = httpx.post(
        f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}/ai-gateway/gateways",
        headers={"authorization": f"Bearer {gateway.account.token}"},
        json={**REQUIRED_GATEWAY_FIELDS, "id": gateway_id, **fields},
    )
    assert response.status_code == 200, response.text


def eventually(read: Callable[[], T], timeout: float = 5.0) -> T:
    """`read()` once it stops raising NotFound: logs are written a moment after the answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except NotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def upstream_count(sim: Sim) -> int:  # noqa: F811
    return len(sim.requests())


async def eventually_async(read: Callable[[], Any], timeout: float = 5.0) -> Any:
    """`await read()` once it stops raising NotFound (the async twin of `eventually`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await read()
        except NotFound:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
