"""The only module that makes outbound HTTP requests: one pooled aiohttp session per process.

aiohttp rather than httpx: on this hardware the same proxy did ~6.7k requests/s per core on aiohttp
and under 1k on httpx (pool contention); see ARCHITECTURE.md.

Failed attempts are counted by provider and kind in a plain dict (`Metrics.upstream_errors`,
exported by `/metrics`): `upstream_unreachable`, `upstream_timeout`, `upstream_error` (a body
cut short), `upstream_stream_broken` (not when the gateway closed the stream because the client
left), and the provider's own `status_429` / `status_5xx` answers, retried or relayed.

A kept-alive connection can be closed by the provider as idle just as a request is sent on it
(uvicorn and Node.js close idle connections after 5 s; the pool keeps them for 30 s). Such a
request fails before a byte of the response, within a round trip, and the provider never read
it: it is sent once more, on a new connection (`_KeptAliveConnector`, `_closed_as_idle`). Any
other failure is the client's 502.

Account-chosen destinations (a `custom-{slug}` provider's base URL, image URLs, or any `send`
with `account_chosen=True`) go through a second pool whose sockets open only to addresses
`tollgate.netguard` permits (SSRF): a refusal is a 403 `upstream_address_refused` naming the
setting that allows it. Operator-configured providers use the first pool, unchecked.

The session decompresses upstream bodies, so relayed responses never carry the upstream's
`content-encoding` or `content-length`; the data plane re-frames them. A timeout applies to the
response headers (the first byte); once a stream has started it may run as long as it needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.connector import Connection

from tollgate import netguard
from tollgate.errors import (
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollgate.settings import UpstreamSettings

# Headers that describe one hop or the old framing; never relayed in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"content-encoding",
        b"host",
    }
)


# An account's own provider (`custom-{slug}`): its base URL is the account's choice.
ACCOUNT_PROVIDER_PREFIX = "custom-"


# A reused connection's failure this soon after the request was sent is the provider's idle close
# racing the request, not the provider failing on it: the close was in flight as we sent.
IDLE_CLOSE_WINDOW_SECONDS = 1.0

# Whether the current request's connection came from the pool (set by `_KeptAliveConnector`; the
# connect runs in the requesting task, so its context is the request's).
_reused_connection: ContextVar[bool] = ContextVar("tollgate_reused_connection", default=False)


class _KeptAliveConnector(aiohttp.TCPConnector):
    """Tells `Upstream.send` whether a request went out on a connection that had served one
    before (only such a connection can have been closed as idle)."""

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        _reused_connection.set(getattr(protocol, "tollgate_served", False))
        if protocol is not None:
            protocol.tollgate_served = True  # type: ignore[attr-defined]
        return connection


class UpstreamStreamBroken(Exception):
    """The upstream connection failed after the response had started."""


Failures = dict[tuple[str, str], int]  # (provider, kind) -> failed attempts


def count_failure(failures: Failures, provider: str, kind: str) -> None:
    key = (provider, kind)
    failures[key] = failures.get(key, 0) + 1


@dataclass(slots=True)
class UpstreamResponse:
    provider: str
    status: int
    headers: list[tuple[bytes, bytes]]  # relayable headers only
    content_type: bytes
    # None when the upstream streams a body of unknown length (chunked).
    content_length: int | None
    _response: aiohttp.ClientResponse
    _failures: Failures
    _closed: bool = False  # by `close()`: a stream cut then is not the upstream's failure

    async def read(self) -> bytes:
        """The whole body; a body cut short is a 502 (nothing has been sent to the client)."""
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            count_failure(self._failures, self.provider, "upstream_error")
            raise UpstreamUnavailable(
                f"The upstream provider {self.provider} broke off its response "
                f"({str(exc) or type(exc).__name__}). Retry later.",
                code="upstream_error",
            ) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            if not self._closed:
                count_failure(self._failures, self.provider, "upstream_stream_broken")
            raise UpstreamStreamBroken(str(exc) or type(exc).__name__) from exc

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        """Drop the connection (the client went away mid-stream; do not reuse it)."""
        self._closed = True
        self._response.close()


class Upstream:
    def __init__(self, settings: UpstreamSettings, failures: Failures | None = None) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        # The pool for account-chosen destinations: its sockets open only to addresses the
        # policy permits, checked after DNS resolution (so DNS rebinding cannot slip past).
        self._guarded: aiohttp.ClientSession | None = None
        self._policy = netguard.AddressPolicy.from_settings(settings.allowed_private_networks)
        # Failed attempts by (provider, kind); the app passes `Metrics.upstream_errors`.
        self.failures: Failures = {} if failures is None else failures

    async def start(self) -> None:
        self._session = self._new_session(None)
        self._guarded = self._new_session(netguard.guarded_socket_factory(self._policy))

    def _new_session(self, socket_factory: netguard.SocketFactory | None) -> aiohttp.ClientSession:
        connector = _KeptAliveConnector(
            limit=self._settings.pool_size,
            ttl_dns_cache=300,
            keepalive_timeout=30,
            socket_factory=socket_factory,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._settings.connect_timeout_seconds
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        for session in (self._session, self._guarded):
            if session is not None:
                await session.close()
        self._session = self._guarded = None

    async def send(
        self,
        *,
        provider: str,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        first_byte_timeout: float | None = None,
        account_chosen: bool = False,
    ) -> UpstreamResponse:
        """Send the request and wait for the response headers. Raises 502/504 errors, and 403
        when an account-chosen destination (`account_chosen`, or a `custom-{slug}` provider)
        is not a permitted address."""
        assert self._session is not None and self._guarded is not None, "start() not called"
        guarded = account_chosen or provider.startswith(ACCOUNT_PROVIDER_PREFIX)
        session = self._guarded if guarded else self._session
        timeout = first_byte_timeout or self._settings.first_byte_timeout_seconds
        header_list = list(headers)

        def request() -> Awaitable[aiohttp.ClientResponse]:
            return session.request(
                method, url, headers=header_list, data=body or None, allow_redirects=False
            )

        try:
            async with asyncio.timeout(timeout):
                sent = time.monotonic()
                try:
                    response = await request()
                except aiohttp.ClientError as exc:
                    if not _closed_as_idle(exc, sent):
                        raise
                    response = await request()  # once more, on a new connection
        except TimeoutError:
            count_failure(self.failures, provider, "upstream_timeout")
            raise UpstreamTimeout(
                f"{provider} sent no response within {timeout:g} s ({_host(url)}). "
                "Retry later, or raise the timeout with cf-aig-request-timeout.",
            ) from None
        except aiohttp.ClientError as exc:
            if netguard.refused(exc):  # the gateway's own policy, not the provider's failure
                raise _address_refused(provider, url) from None
            count_failure(self.failures, provider, "upstream_unreachable")
            raise _unreachable(provider, url, exc) from None
        if response.status >= 500 or response.status == 429:  # the provider's own failure
            kind = "status_429" if response.status == 429 else "status_5xx"
            count_failure(self.failures, provider, kind)
        relayed = [
            (name.lower(), value)
            for name, value in response.raw_headers
            if name.lower() not in HOP_BY_HOP
        ]
        return UpstreamResponse(
            provider=provider,
            status=response.status,
            headers=relayed,
            content_type=response.headers.get("content-type", "").encode("latin-1"),
            content_length=None
            if response.headers.get("content-encoding")
            else response.content_length,
            _response=response,
            _failures=self.failures,
        )

    async def fetch_image(self, url: str, *, allow_private: bool) -> tuple[bytes, str]:
        """Download an image a client linked to; any failure is the client's 400. Unless
        `allow_private`, only https, through the guarded pool (public addresses, plus the
        operator's allowed networks)."""
        assert self._session is not None and self._guarded is not None, "start() not called"
        _check_fetchable(url, allow_private=allow_private)
        session = self._session if allow_private else self._guarded
        limit = self._settings.max_image_bytes
        try:
            async with asyncio.timeout(self._settings.connect_timeout_seconds * 3):
                async with session.get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        raise _image_error(url, f"it answered HTTP {response.status}")
                    media_type = response.headers.get("content-type", "").split(";")[0]
                    if not media_type.startswith("image/"):
                        raise _image_error(url, f"it is {media_type or 'not'} an image")
                    body = await response.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if netguard.refused(exc):
                raise _image_error(url, "it points inside the gateway's own network") from None
            raise _image_error(url, str(exc) or type(exc).__name__) from None
        if len(body) > limit:
            raise _image_error(url, f"it is larger than {limit} bytes")
        return body, media_type


def _check_fetchable(url: str, *, allow_private: bool) -> None:
    """Refuse other schemes, and plain http unless allowed. The addresses are checked as the
    guarded pool connects (SSRF, `tollgate.netguard`): checked here, apart from the
    connection, a name could resolve to another address by then (DNS rebinding)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _image_error(url, "only http(s) URLs can be fetched")
    if not allow_private and parts.scheme != "https":
        raise _image_error(url, "only https image URLs are fetched")


def _image_error(url: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"The image at {url} could not be fetched: {why}. Send the image inline as a data: URL.",
        code="image_fetch_failed",
    )


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _address_refused(provider: str, url: str) -> PermissionDenied:
    return PermissionDenied(
        f"tollgate did not connect to {_host(url)} for {provider}: the host is (or resolves "
        "to) a loopback, private, link-local or other non-public address, which account-chosen "
        "upstreams may not reach. Point the provider's base_url at a public host, or ask the "
        f"operator to allow that network with {netguard.ALLOW_SETTING}.",
        code="upstream_address_refused",
    )


def _closed_as_idle(exc: aiohttp.ClientError, sent: float) -> bool:
    """Whether a request failed only because the provider had closed its kept-alive connection
    as idle: the connection was reused, and it broke before a byte of the response, at once."""
    return (
        isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and _reused_connection.get()
        and time.monotonic() - sent < IDLE_CLOSE_WINDOW_SECONDS
    )


def _unreachable(provider: str, url: str, exc: aiohttp.ClientError) -> GatewayError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = f"could not connect to {_host(url)} ({exc.os_error.strerror or exc.os_error})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        cause = f"{_host(url)} closed the connection before responding"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    return UpstreamUnavailable(
        f"The upstream provider {provider} is unreachable: {cause}. Retry later.",
        code="upstream_unreachable",
    )
