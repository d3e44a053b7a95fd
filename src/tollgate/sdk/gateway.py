"""`ai.gateway(id)`: one gateway of the account, as Cloudflare's binding `env.AI.gateway(id)`.

    run(steps)              the Universal endpoint: one step or a list, tried in order
    get_log(log_id)         one log (the binding's `getLog`)
    patch_log(log_id, ...)  set its feedback, score and/or metadata (`patchLog`)
    get_url(provider=None)  the gateway's base URL, or a provider's under it (`getUrl`)

`Gateway` belongs to an `AI` client and `AsyncGateway` to an `AsyncAI`; both send through their
client (its connection pool, timeout and `last_log_id`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx

from tollgate.sdk._core import UNSET, Call, ClientCore, json_body, log_result, patch_body
from tollgate.sdk._options import GatewayOptions, UniversalStep, check_gateway_id
from tollgate.sdk._streams import AsyncStream, Stream
from tollgate.sdk.errors import TollgateError

if TYPE_CHECKING:
    from tollgate.sdk.aio import AsyncAI
    from tollgate.sdk.client import AI

Steps = UniversalStep | Mapping[str, Any] | Sequence[UniversalStep | Mapping[str, Any]]
_PROVIDER = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")


class _GatewayBase:
    """What both gateway classes share: the id, the URL and the last step."""

    def __init__(self, core: ClientCore, gateway_id: str) -> None:
        self.id = check_gateway_id(gateway_id)
        #: The Universal step (0-based) that produced the last `run`'s answer, or None.
        self.last_step: int | None = None
        self._core = core

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def get_url(self, provider: str | None = None) -> str:
        """The gateway's base URL (the Universal endpoint, with a trailing slash), or the base
        URL of `provider` under it: what a provider's own SDK takes as `base_url`, for example
        `get_url("openai")` -> `http://127.0.0.1:8787/v1/{account}/{gateway}/openai`.
        Computed from the client's `base_url`; no request is made."""
        root = f"{self._core.base_url}/v1/{self._core.account_id}/{self.id}"
        if provider is None:
            return root + "/"
        if not isinstance(provider, str):
            raise TypeError(f"provider must be a string or None, got {type(provider).__name__}")
        if not _PROVIDER.fullmatch(provider):
            raise ValueError(
                f"provider must be a provider slug such as 'openai' or 'custom-acme', "
                f"got {provider!r}"
            )
        return f"{root}/{provider}"

    def _note_step(self, headers: Mapping[str, str]) -> None:
        step = headers.get("cf-aig-step")
        self.last_step = int(step) if step is not None and step.isdigit() else None


class Gateway(_GatewayBase):
    """A gateway of an `AI` client; get one with `ai.gateway(id)`."""

    def __init__(self, ai: AI, gateway_id: str) -> None:
        super().__init__(ai, gateway_id)
        self._ai = ai

    @overload
    def run(
        self,
        steps: Steps,
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[False] = False,
    ) -> Any: ...

    @overload
    def run(
        self, steps: Steps, *, gateway: GatewayOptions | None = None, stream: Literal[True]
    ) -> Stream: ...

    def run(
        self, steps: Steps, *, gateway: GatewayOptions | None = None, stream: bool = False
    ) -> Any:
        """Send `steps` to the Universal endpoint and return the answering provider's JSON,
        in that provider's own format (or, with `stream=True`, a `Stream` of its chunks; put
        `"stream": true` in the steps' `query` too).

        A step is `{"provider", "endpoint", "query", "headers"?, "config"?}`; the steps are
        tried in order until one answers, and `last_step` says which did. `gateway` takes the
        options of `AI.run` except `id`, sent as headers every step inherits."""
        call = self._ai._universal_call(self.id, steps, gateway, stream)
        response = self._send(call)
        return Stream(response) if stream else json_body(response)

    def get_log(self, log_id: str) -> dict[str, Any]:
        """The log `log_id` (an answer's `cf-aig-log-id`, e.g. `ai.last_log_id`), with
        `created_at` as a datetime and `metadata` as a dict. Logs are written a moment after
        the answer: a `NotFound` right after a call may mean "not yet"."""
        response = self._ai._send(self._ai._log_call(self.id, log_id))
        return log_result(json_body(response))

    def patch_log(
        self,
        log_id: str,
        *,
        feedback: Literal[-1, 0, 1] | None = UNSET,
        score: float | None = UNSET,
        metadata: Mapping[str, str | int | float | bool | None] | None = UNSET,
    ) -> None:
        """Set the log's `feedback` (-1 or 1; 0 also accepted), `score` (a number) and/or
        `metadata` (a flat dict of at most 5 entries). Only the fields given change; None
        clears one."""
        body = patch_body(feedback, score, metadata)
        self._ai._send(self._ai._log_call(self.id, log_id, "PATCH", body))

    def _send(self, call: Call) -> httpx.Response:
        try:
            response = self._ai._send(call)
        except TollgateError as error:
            self._note_step(error.headers)
            raise
        self._note_step(response.headers)
        return response


class AsyncGateway(_GatewayBase):
    """A gateway of an `AsyncAI` client; get one with `ai.gateway(id)`."""

    def __init__(self, ai: AsyncAI, gateway_id: str) -> None:
        super().__init__(ai, gateway_id)
        self._ai = ai

    @overload
    async def run(
        self,
        steps: Steps,
        *,
        gateway: GatewayOptions | None = None,
        stream: Literal[False] = False,
    ) -> Any: ...

    @overload
    async def run(
        self, steps: Steps, *, gateway: GatewayOptions | None = None, stream: Literal[True]
    ) -> AsyncStream: ...

    async def run(
        self, steps: Steps, *, gateway: GatewayOptions | None = None, stream: bool = False
    ) -> Any:
        """Send `steps` to the Universal endpoint; as `Gateway.run`, awaited (a stream is an
        `AsyncStream`)."""
        call = self._ai._universal_call(self.id, steps, gateway, stream)
        response = await self._send(call)
        return AsyncStream(response) if stream else json_body(response)

    async def get_log(self, log_id: str) -> dict[str, Any]:
        """The log `log_id`; as `Gateway.get_log`, awaited."""
        response = await self._ai._send(self._ai._log_call(self.id, log_id))
        return log_result(json_body(response))

    async def patch_log(
        self,
        log_id: str,
        *,
        feedback: Literal[-1, 0, 1] | None = UNSET,
        score: float | None = UNSET,
        metadata: Mapping[str, str | int | float | bool | None] | None = UNSET,
    ) -> None:
        """Set the log's feedback, score and/or metadata; as `Gateway.patch_log`, awaited."""
        body = patch_body(feedback, score, metadata)
        await self._ai._send(self._ai._log_call(self.id, log_id, "PATCH", body))

    async def _send(self, call: Call) -> httpx.Response:
        try:
            response = await self._ai._send(call)
        except TollgateError as error:
            self._note_step(error.headers)
            raise
        self._note_step(response.headers)
        return response
