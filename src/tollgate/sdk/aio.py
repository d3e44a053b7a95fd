"""`AsyncAI`: the Workers AI binding in Python for asyncio, over `httpx.AsyncClient`.

    async with AsyncAI(account_id, token, "http://127.0.0.1:8787") as ai:
        reply = await ai.run("openai/gpt-4o-mini", {"prompt": "Hello"})
        async for chunk in await ai.run("openai/gpt-4o-mini", {"prompt": "Hi"}, stream=True):
            ...

Everything `AI` (`tollgate.sdk.client`) does, awaited; the calls are built by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from tollgate.sdk._core import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    Call,
    ClientCore,
    Timeout,
    error_for,
    json_body,
    models_page,
    run_result,
)
from tollgate.sdk._options import GatewayOptions
from tollgate.sdk._streams import AsyncStream
from tollgate.sdk.gateway import AsyncGateway


class AsyncAI(ClientCore):
    """A client of one account on a tollgate gateway, for asyncio.

    The arguments are `AI`'s; `http_client` is an `httpx.AsyncClient` of your own (not closed
    by `aclose()`). `last_log_id` is the `cf-aig-log-id` of this client's last model call.
    Use it as `async with AsyncAI(...) as ai:` or call `await ai.aclose()`.
    """

    def __init__(
        self,
        account_id: str,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(account_id, token, base_url, timeout)
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError(
                f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}"
                + (" (use AI for an httpx.Client)" if isinstance(http_client, httpx.Client) else "")
            )
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    @overload
    async def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[False] = False,
    ) -> dict[str, Any]: ...

    @overload
    async def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[True],
    ) -> AsyncStream: ...

    async def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | AsyncStream:
        """Run `model` on `inputs`; as `AI.run`, awaited. With `stream=True` the answer is an
        `AsyncStream` (iterate it with `async for`); an error before the first chunk raises
        here."""
        call = self._run_call(model, inputs, gateway, stream)
        response = await self._send(call)
        return AsyncStream(response) if stream else run_result(json_body(response))

    def gateway(self, gateway_id: str) -> AsyncGateway:
        """The account's gateway `gateway_id` (awaitable `run`, `get_log`, `patch_log`; plain
        `get_url`). No request is made."""
        return AsyncGateway(self, gateway_id)

    async def models(
        self, search: str | None = None, provider: str | None = None
    ) -> list[dict[str, Any]]:
        """Every model the gateway can price, with prices; as `AI.models`, awaited."""
        models: list[dict[str, Any]] = []
        page = 1
        while True:
            response = await self._send(self._models_call(search, provider, page))
            found, pages = models_page(json_body(response))
            models.extend(found)
            if page >= pages or not found:
                return models
            page += 1

    async def aclose(self) -> None:
        """Close the connection pool (unless it came from `http_client`)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncAI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        """Send `call`; an error answer raises its typed exception (`tollgate.sdk.errors`)."""
        request = self._http.build_request(**self._request_arguments(call))
        response = await self._http.send(request, stream=call.stream)
        self._observe(call, response)
        if response.is_error:
            if call.stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            raise error_for(response)
        return response
