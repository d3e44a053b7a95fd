"""`AI`: the Workers AI binding (`env.AI`) in Python, synchronous, over `httpx.Client`.

    with AI(account_id, token, "http://127.0.0.1:8787") as ai:
        reply = ai.run("openai/gpt-4o-mini", {"prompt": "Hello"}, gateway={"id": "default"})
        print(reply["choices"][0]["message"]["content"], ai.last_log_id)

`AsyncAI` (`tollgate.sdk.aio`) is the same client for asyncio.
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
from tollgate.sdk._streams import Stream
from tollgate.sdk.gateway import Gateway


class AI(ClientCore):
    """A client of one account on a tollgate gateway.

    `account_id` is the account's 32-hex id, `token` an API token (`tg_...`) with the `run`
    permission (and `read` / `edit` for logs and models), `base_url` the gateway's address.
    `timeout` is seconds per request (or an `httpx.Timeout`, or None for none). Pass
    `http_client` to send through an `httpx.Client` of your own (proxies, transports, pools);
    the SDK does not close a client it did not create.

    `last_log_id` is the `cf-aig-log-id` of this client's last model call (`run` or a
    gateway's `run`), whatever its outcome; None before the first. Concurrent calls on one
    client race for it, as they do on Cloudflare's binding.
    """

    def __init__(
        self,
        account_id: str,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(account_id, token, base_url, timeout)
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise TypeError(
                f"http_client must be an httpx.Client, got {type(http_client).__name__}"
                + (" (use AsyncAI for an httpx.AsyncClient)" if _is_async(http_client) else "")
            )
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    @overload
    def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[False] = False,
    ) -> dict[str, Any]: ...

    @overload
    def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[True],
    ) -> Stream: ...

    def run(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        gateway: GatewayOptions | None = None,
        stream: bool = False,
    ) -> dict[str, Any] | Stream:
        """Run `model` (`{provider}/{model}`, e.g. `openai/gpt-4o-mini`) on `inputs` and
        return its answer.

        Chat models take `{"messages": [...]}` or `{"prompt": "..."}`, plus the provider's
        other fields (`max_tokens`, `temperature`...), and answer in OpenAI's chat completion
        format. Embedding models take `{"input": ...}` (or Workers AI's `{"text": ...}`) and
        answer in OpenAI's embeddings format.

        `gateway` sets the gateway and its per-request options: `id` (default `default`),
        `skip_cache`, `cache_ttl`, `cache_key`, `metadata`, `collect_log`, `event_id`,
        `request_timeout_ms` and `retries` (`max_attempts`, `retry_delay_ms`, `backoff`).
        They are checked before anything is sent (`TypeError` / `ValueError`).

        With `stream=True` the answer is a `Stream` of OpenAI chunks; an error before the
        first chunk raises here, as an unstreamed call would.
        """
        call = self._run_call(model, inputs, gateway, stream)
        response = self._send(call)
        return Stream(response) if stream else run_result(json_body(response))

    def gateway(self, gateway_id: str) -> Gateway:
        """The account's gateway `gateway_id`: Universal `run`, `get_log`, `patch_log`,
        `get_url`. No request is made."""
        return Gateway(self, gateway_id)

    def models(
        self, search: str | None = None, provider: str | None = None
    ) -> list[dict[str, Any]]:
        """Every model the gateway can price, optionally filtered by `search` (in the id) and
        `provider`: `{"id", "provider", "context_window", "max_output_tokens", "pricing":
        {"currency": "USD", "input", "output", "cached_input", ...}}`, prices in USD per
        million tokens. Needs the `read` permission."""
        models: list[dict[str, Any]] = []
        page = 1
        while True:
            response = self._send(self._models_call(search, provider, page))
            found, pages = models_page(json_body(response))
            models.extend(found)
            if page >= pages or not found:
                return models
            page += 1

    def close(self) -> None:
        """Close the connection pool (unless it came from `http_client`)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        """Send `call`; an error answer raises its typed exception (`tollgate.sdk.errors`)."""
        request = self._http.build_request(**self._request_arguments(call))
        response = self._http.send(request, stream=call.stream)
        self._observe(call, response)
        if response.is_error:
            if call.stream:
                try:
                    response.read()
                finally:
                    response.close()
            raise error_for(response)
        return response


def _is_async(client: object) -> bool:
    return isinstance(client, httpx.AsyncClient)
