"""The pipeline's billing step: price and hold before forwarding, settle after.

    admission = await meter.admit(...)     # 400 unpriced, 402 insufficient_credits, 429 limit
    ... forward, relay, observe usage ...
    settlement = await meter.settle(admission, usage, produced=...)

What is held: the prompt estimate (`billing.requests.estimate_prompt_tokens`) at the input price
plus the output cap (the request's, or the model's maximum) at the output price. When the balance
cannot cover the model's maximum output and the request set no cap, the cap is lowered to what the
balance affords (`Admission.capped_tokens`; the pipeline rewrites the body and says so in the
`cf-aig-max-tokens-capped` header); below `MIN_USEFUL_OUTPUT_TOKENS` the request is refused.

Unified Billing requests hold credits and count toward every limit. BYOK requests for a priced
model count toward the gateway's spend-limit rules only (as Cloudflare does); BYOK requests for an
unpriced model are not metered at all. A Unified Billing request for an unpriced model, or for an
endpoint the gateway cannot price, is refused before it is forwarded.

A client's `cf-aig-custom-cost` (`tollgate.features.custom_cost`, read into `ctx.custom_rates`)
replaces the catalog price for its request, at admission and at settlement alike: per-token rates
become the request's `ModelPrice`, a total is added as a flat amount. It is refused (400) on a
Unified Billing request unless the operator allows it there. A BYOK request with one is always
metered (a hold without credits, counted by the spend rules that apply): also for a model the
catalog does not price, and also when no rule applies, so the log carries its cost.

Settling: measured usage is charged at the catalog price. A call that produced nothing (an
upstream error, a connection that failed before any byte) is released, never billed. A response
that produced output but whose usage was never seen (the client went away mid-stream) is charged
an estimate: the prompt estimate plus a quarter of the relayed bytes as output, flagged estimated.
A stream that broke off before the answer's end (`complete=False`: the relay decides, see
`tollgate.relay`) may have shown only partial usage (Anthropic's `message_start` counts one output
token): its input is kept as measured, its output is the larger of the count seen and that
estimate, and the charge is flagged estimated. An estimate never counts more output than the
hold covers (`Admission.output_cap`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tollgate.billing.catalog import Catalog, ModelPrice
from tollgate.billing.deferred import DeferredSettlements, Due
from tollgate.billing.ledger import Ledger, Settlement
from tollgate.billing.limits import applicable_limits
from tollgate.billing.requests import RequestFacts, estimate_prompt_tokens
from tollgate.cache import RefreshingCache
from tollgate.canonical import Usage
from tollgate.errors import InsufficientBalance, InvalidRequest
from tollgate.features.context import RequestContext
from tollgate.features.custom_cost import CustomCost, not_allowed_for_unified_billing
from tollgate.store import GatewayRecord, Store
from tollgate.store import limits as limits_repo
from tollgate.store._util import ordered_id
from tollgate.store.engine import DATABASE_ERRORS, unreachable
from tollgate.store.holds import Hold
from tollgate.tasks import cancel_and_wait

MIN_USEFUL_OUTPUT_TOKENS = 64
BYTES_PER_OUTPUT_TOKEN = 4
# The keep-alive stops extending a hold this old: a request the pipeline never settled (a bug)
# must not hold credits forever; recovery then resolves it once its last expiry passes.
KEEP_ALIVE_MAX_AGE = timedelta(hours=24)

# The note of a request the server cut at shutdown before its upstream answered.
SHUTDOWN_NOTE = "cut at shutdown: forwarded, never answered; charged the hold-time estimate"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """One request's billing state between admission and settlement."""

    hold: Hold | None  # None: nothing is metered for this request
    price: ModelPrice | None
    provider: str
    prompt_estimate: int
    capped_tokens: int | None  # the output cap the gateway imposed, if it had to
    uses_credits: bool
    # The search context the request pays a fee for (models with per-request search fees):
    # the request's, else "low" (Perplexity's default); a response that reports one wins.
    search_context: str | None = None
    pro_search: bool = False  # the fee is Sonar Pro's "Pro Search" one
    # The request's context: its metadata feeds the spend rules; the settlement's usage and
    # cost are written back into it for the request's log.
    ctx: RequestContext | None = None
    # The client's `cf-aig-custom-cost`: `price` already carries its rates; its total (if it
    # set one) is added to every cost of this request, held and settled alike.
    custom_cost: CustomCost | None = None
    # The output the hold covers (the request's cap, the gateway's, or the model's maximum):
    # an estimate never charges more output than this.
    output_cap: int | None = None

    @property
    def flat_nanos(self) -> int:
        return self.custom_cost.total_nanos if self.custom_cost is not None else 0

    @property
    def metered(self) -> bool:
        return self.hold is not None

    @property
    def observed(self) -> bool:
        """Nothing held (the client's own key pays, no spend rule counts it), but priced: the
        answer's usage is still read, so the request's log shows its tokens and cost."""
        return self.hold is None and self.price is not None and self.ctx is not None


NOT_METERED = Admission(None, None, "", 0, None, False)


class Meter:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        ledger: Ledger,
        on_settled: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.ledger = ledger
        # Told (account id, balance after) after every settle that used credits: auto top-up.
        self.on_settled = on_settled
        self._account_limits: RefreshingCache[str, limits_repo.AccountLimit | None] = (
            RefreshingCache(
                lambda account: limits_repo.get_account_limit(store, account),
                ttl=5.0,
                confirmed_by=store,
            )
        )
        # Holds admitted and not yet settled by this process, for the keep-alive.
        self._in_flight: dict[str, Hold] = {}
        self._keep_alive: asyncio.Task[None] | None = None
        # Settlements of requests that ended while the database was unreachable.
        self.deferred = DeferredSettlements(ledger, self._told_settled)

    def forget_account_limit(self, account_id: str) -> None:
        self._account_limits.invalidate(account_id)

    async def admit(
        self,
        *,
        account_id: str,
        gateway: GatewayRecord,
        provider: str,
        facts: RequestFacts,
        body: bytes,
        unified: bool,
        metadata: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> Admission:
        """Hold the request's upper-bound cost, or refuse it. Nothing is forwarded before this."""
        custom = ctx.custom_rates if ctx is not None else None
        if custom is not None and unified and not custom.unified_allowed:
            raise not_allowed_for_unified_billing()
        if facts.kind == "free" or (facts.kind == "unknown" and not unified):
            return NOT_METERED
        if facts.kind == "unknown":
            raise InvalidRequest(
                f"This {provider} endpoint is not available through Unified Billing (the gateway "
                "cannot price it). Send your own provider key to use it.",
                code="endpoint_not_billable",
            )
        listed = self.catalog.lookup(provider, facts.model or "")
        if custom is not None and (listed is not None or not unified):
            # The client's price; for BYOK also for a model the catalog does not list.
            price = custom.price_for(provider, facts.model or "", listed)
        elif listed is not None:
            price = listed
        elif not unified:
            return NOT_METERED
        else:
            raise InvalidRequest(
                f"The model '{facts.model}' has no price in this gateway's catalog, so it "
                "cannot be billed. Use a model listed by /compat/models, or ask the operator "
                "to price it.",
                code="unpriced_model",
                param="model",
            )
        limits = applicable_limits(
            account_id,
            account_limit_config=await self._account_limits.get(account_id),
            gateway_id=gateway.id,
            spend_limits=gateway.config.get("spend_limits"),
            model=price.model,
            provider=price.provider,
            metadata=ctx.metadata if metadata is None and ctx is not None else metadata,
            unified_billing=unified,
        )
        if not unified and not limits and custom is None:
            # Nothing to hold; with a context the answer is observed for the log (and a custom
            # cost is metered anyway: it may count towards a spend rule added later).
            if ctx is None:
                return NOT_METERED
            search = (facts.search_context or "low") if price.has_request_fee else None
            pro_search = _pro_search(price, facts)
            return Admission(None, price, price.provider, 0, None, False, search, pro_search, ctx)
        prompt = Usage(
            estimate_prompt_tokens(body),
            search_context=(facts.search_context or "low") if price.has_request_fee else None,
            pro_search=_pro_search(price, facts),
        )
        output = 0 if facts.kind == "embeddings" else facts.max_output_tokens
        # Without a cap the upstream may produce up to this: the model's maximum, or less when
        # the gateway sends a default cap of its own (`RequestFacts.default_output_tokens`).
        ceiling = min(price.max_output_tokens, facts.default_output_tokens or math.inf)
        capped = None
        flat = custom.total_nanos if custom is not None else 0
        try:
            hold = await self._hold(
                account_id, gateway, price, prompt, output, limits, unified, flat, int(ceiling)
            )
        except InsufficientBalance as short:
            capped = (
                self._affordable_output(price, prompt, short, int(ceiling))
                if output is None
                else None
            )
            if capped is None:
                raise
            hold = await self._hold(
                account_id, gateway, price, prompt, capped, limits, unified, flat
            )
        self._in_flight[hold.id] = hold
        if capped is not None:
            held_output = capped
        else:
            held_output = int(ceiling) if output is None else output
        return Admission(
            hold,
            price,
            price.provider,
            prompt.input_tokens,
            capped,
            unified,
            prompt.search_context,
            prompt.pro_search,
            ctx,
            custom,
            held_output,
        )

    async def _hold(
        self,
        account_id: str,
        gateway: GatewayRecord,
        price: ModelPrice,
        prompt: Usage,
        output: int | None,
        limits: list[Any],
        unified: bool,
        flat_nanos: int = 0,
        ceiling: int | None = None,
    ) -> Hold:
        """`prompt`: the prompt estimate (and the search context it pays a fee for);
        `flat_nanos`: a custom total cost, on top of the token cost; `ceiling`: the output a
        request without a cap may produce (default: the model's maximum)."""
        out = (ceiling or price.max_output_tokens) if output is None else output
        with_output = Usage(
            prompt.input_tokens,
            out,
            search_context=prompt.search_context,
            pro_search=prompt.pro_search,
        )
        upper = flat_nanos + self.catalog.cost(price.provider, price, with_output)
        recovery = flat_nanos + self.catalog.cost(price.provider, price, prompt)
        request_id = f"req_{ordered_id()}"
        try:
            return await self.ledger.hold(
                account_id,
                request_id,
                upper,
                gateway_id=gateway.id,
                limits=limits,
                model=price.id,
                recovery_charge_nanos=recovery,
                uses_credits=unified,
                # The upstream call follows at once; recording it here saves a write per
                # request. The cost: a crash between this commit and the call settles the
                # prompt estimate instead of releasing (the recovery policy, billing/ledger.py).
                forwarded=True,
            )
        except DATABASE_ERRORS as down:
            if unreachable(down):  # its commit may have landed with the answer lost: undo it
                self.deferred.release_if_held(request_id)
            raise

    def _affordable_output(
        self, price: ModelPrice, prompt: Usage, short: InsufficientBalance, ceiling: int
    ) -> int | None:
        """The largest output cap (up to `ceiling`) the available credits cover, or None below
        a useful one."""
        prompt_cost = self.catalog.cost(price.provider, price, prompt)
        per_token = self.catalog.cost(price.provider, price, Usage(0, 1_000_000))
        room = short.available_nanos - prompt_cost
        if per_token <= 0 or room <= 0:
            return None
        tokens = min(room * 1_000_000 // per_token, ceiling)
        return tokens if tokens >= MIN_USEFUL_OUTPUT_TOKENS else None

    async def settle(
        self,
        admission: Admission,
        usage: Usage | None,
        *,
        produced_bytes: int,
        complete: bool = True,
        estimated: bool = False,
    ) -> Settlement | None:
        """Charge what was used; release when nothing was produced; estimate when unseen or
        when the response broke off before its final usage (`complete=False`). `estimated`:
        the caller's `usage` is its own estimate (a provider that reports no count)."""
        if admission.hold is None or admission.price is None:
            if admission.observed and usage is not None and complete:
                assert admission.ctx is not None and admission.price is not None
                now = self.ledger.clock()
                usage = _with_request_choices(admission, usage)
                off_peak = admission.price.is_off_peak(now, now)
                cost = self._cost(admission, admission.price, usage, off_peak)
                admission.ctx.record_observed(usage.input_tokens, usage.output_tokens, cost)
            return None
        hold = admission.hold
        self._in_flight.pop(hold.id, None)
        if usage is None and produced_bytes == 0:
            return await self._write(Due(hold, None, False, ""))
        estimated = estimated or usage is None or not complete
        output = math.ceil(produced_bytes / BYTES_PER_OUTPUT_TOKEN)
        if admission.output_cap is not None:
            # Bytes / 4 overcounts small stream events many times over; the upstream could
            # not have produced more than the request allowed.
            output = min(output, admission.output_cap)
        if usage is None:
            usage = Usage(admission.prompt_estimate, output)
        elif not complete and usage.output_tokens < output:
            usage = dataclasses.replace(usage, output_tokens=output)
        usage = _with_request_choices(admission, usage)
        price = admission.price
        off_peak = price.off_peak is not None and price.is_off_peak(
            admission.hold.created_at, self.ledger.clock()
        )
        cost = self._cost(admission, price, usage, off_peak)
        note = _note(price, usage, estimated, off_peak, admission.custom_cost is not None)
        settlement = await self._write(Due(hold, cost, estimated, note))
        if admission.ctx is not None:
            admission.ctx.record_usage(usage.input_tokens, usage.output_tokens, settlement)
        return settlement

    async def _write(self, due: Due) -> Settlement:
        """Settle (or release: no charge) a request's hold; while the database is unreachable,
        defer it (`billing/deferred.py`) rather than leave it to crash recovery's estimate."""
        try:
            if due.charge_nanos is None:
                return await self.ledger.release(due.hold, wait_for_commit=False)
            settlement = await self.ledger.settle(
                due.hold,
                due.charge_nanos,
                estimated=due.estimated,
                note=due.note,
                wait_for_commit=False,  # journaled first: the answer need not wait for the batch
            )
        except DATABASE_ERRORS as down:
            if not unreachable(down):
                raise
            return self.deferred.defer(due)
        self._told_settled(settlement)
        return settlement

    def _told_settled(self, settlement: Settlement) -> None:
        """Auto top-up's cue: a settle that used credits, written now (not replayed)."""
        balance = settlement.balance_after_nanos
        if self.on_settled is not None and balance is not None and not settlement.replayed:
            self.on_settled(settlement.account_id, balance)

    def _cost(self, admission: Admission, price: ModelPrice, usage: Usage, off_peak: bool) -> int:
        """What `usage` costs at the request's price (a custom total on top)."""
        return admission.flat_nanos + self.catalog.cost(
            admission.provider, price, usage, off_peak=off_peak
        )

    # --- shutdown: requests that ended without settling ------------------------------------------

    async def settle_abandoned(self) -> int:
        """At shutdown, once the requests are over: settle the holds of those that ended without
        settling (cut at the end of the grace period while still waiting for their upstream) as
        crash recovery would at the next start (`Ledger.recover`: forwarded, so charged the
        hold-time estimate, flagged), so that no hold stays open and every lease can be given
        back. Returns how many there were."""
        abandoned = list(self._in_flight.values())
        self._in_flight.clear()
        for hold in abandoned:
            try:
                await self.ledger.settle(
                    hold, hold.recovery_charge_nanos, estimated=True, note=SHUTDOWN_NOTE
                )
            except Exception:  # left open: the next start's recovery resolves it the same way
                log.exception("settling the hold of a request cut at shutdown failed")
        if abandoned:
            log.warning("settled %d requests cut at shutdown at their estimates", len(abandoned))
        return len(abandoned)

    # --- keep-alive: a request longer than the hold TTL must not be recovered mid-flight ---------

    async def keep_alive(self) -> int:
        """Push the expiry of every hold this process still has in flight (one transaction);
        returns how many were extended. Holds older than `KEEP_ALIVE_MAX_AGE` are left alone."""
        oldest = self.ledger.clock() - KEEP_ALIVE_MAX_AGE
        holds = [*self._in_flight.values(), *self.deferred.holds()]
        alive = [hold for hold in holds if hold.created_at > oldest]
        return await self.ledger.extend_many(alive) if alive else 0

    def start_keep_alive(self) -> None:
        """Run `keep_alive` every third of the hold TTL, until `stop_keep_alive`: a hold then
        always has two chances to be extended before it could expire."""
        interval = self.ledger.hold_ttl.total_seconds() / 3
        self._keep_alive = asyncio.create_task(self._keep_alive_loop(interval))

    async def stop_keep_alive(self) -> None:
        task, self._keep_alive = self._keep_alive, None
        await cancel_and_wait(task)

    async def _keep_alive_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.keep_alive()
            except Exception:  # the database may be down for a moment: the next round retries
                log.exception("extending the holds of requests in flight failed")


def _pro_search(price: ModelPrice, facts: RequestFacts) -> bool:
    """Sonar Pro's Pro Search runs only on streamed requests that ask for it (`pro`) or let the
    model decide (`auto`: billed as Pro Search, since the response does not say; never under)."""
    return price.has_pro_search and facts.stream and facts.search_type in ("pro", "auto")


def _with_request_choices(admission: Admission, usage: Usage) -> Usage:
    """The usage with what the request chose and the response does not report: the search
    context (when the response names none) and Pro Search."""
    if usage.search_context is None and admission.search_context is not None:
        usage = dataclasses.replace(usage, search_context=admission.search_context)
    if admission.pro_search:
        usage = dataclasses.replace(usage, pro_search=True)
    return usage


def _note(
    price: ModelPrice, usage: Usage, estimated: bool, off_peak: bool, custom: bool = False
) -> str:
    """The usage entry's note: what was billed, in the units the price list uses."""
    parts = [f"{usage.input_tokens} in", f"{usage.output_tokens} out"]
    if custom:
        parts.append("custom cost (cf-aig-custom-cost)")
    if usage.citation_tokens:
        parts.append(f"{usage.citation_tokens} citation")
    if usage.search_queries:
        parts.append(f"{usage.search_queries} searches")
    if usage.search_context is not None and price.has_request_fee:
        pro = "Pro Search, " if usage.pro_search else ""
        parts.append(f"{pro}search context {usage.search_context}")
    if off_peak:
        parts.append("off-peak prices")
    return f"{price.id}: {', '.join(parts)}" + (" (estimated)" if estimated else "")
