"""The billing step of a request, between authentication and the upstream call.

`admit` prices and holds the request (`tollgate.billing.meter`), then prepares what the relay
needs: a `UsageWatch` to observe usage and settle, the body to send (rewritten only to cap the
output or to ask an OpenAI stream for its usage), and response headers that say what the gateway
changed. Shared by the native endpoints and the Unified API.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tollgate.billing.meter import Admission
from tollgate.billing.requests import RequestFacts, with_output_cap, with_usage_requested
from tollgate.billing.watch import UsageWatch
from tollgate.features.context import RequestContext
from tollgate.providers.registry import ProviderRow
from tollgate.providers.select import adapter_for
from tollgate.services import Services
from tollgate.store import GatewayRecord


@dataclass(slots=True)
class Admitted:
    admission: Admission
    watch: UsageWatch | None  # None when nothing is metered
    body: bytes
    headers: list[tuple[bytes, bytes]]


async def admit(
    services: Services,
    *,
    account_id: str,
    gateway: GatewayRecord,
    row: ProviderRow,
    facts: RequestFacts,
    parsed: dict[str, object] | None,
    body: bytes,
    unified: bool,
    ctx: RequestContext,
) -> Admitted:
    admission = await services.meter.admit(
        account_id=account_id,
        gateway=gateway,
        provider=row.slug,
        facts=facts,
        body=body,
        unified=unified,
        ctx=ctx,
    )
    if not admission.metered:
        if not admission.observed:
            return Admitted(admission, None, body, [])
        # Observed only (for the log): the body goes as the client sent it, usage as it comes.
        watch = UsageWatch(
            services.meter, admission, adapter_for(row), facts, strip_usage_chunk=False
        )
        return Admitted(admission, watch, body, [])
    headers: list[tuple[bytes, bytes]] = []
    strip = needs_usage_chunk(row, facts)
    if parsed is not None and (admission.capped_tokens is not None or strip):
        if admission.capped_tokens is not None:
            with_output_cap(facts.kind, parsed, admission.capped_tokens, row.max_tokens_field)
            headers.append((b"cf-aig-max-tokens-capped", str(admission.capped_tokens).encode()))
        if strip:
            with_usage_requested(parsed)
        body = orjson.dumps(parsed)
    watch = UsageWatch(services.meter, admission, adapter_for(row), facts, strip_usage_chunk=strip)
    return Admitted(admission, watch, body, headers)


def needs_usage_chunk(row: ProviderRow, facts: RequestFacts) -> bool:
    """An OpenAI chat stream reports usage only when asked: the gateway always asks."""
    chat_stream = facts.kind == "chat" and facts.stream
    return row.wire == "openai" and chat_stream and not facts.wants_usage_chunk
