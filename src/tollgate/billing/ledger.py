"""The ledger's one entry point: hold before forwarding, settle or release after, recover at start.

    ledger = Ledger(store, clock)
    hold = await ledger.hold(account_id, request_id, upper_bound, gateway_id=..., limits=specs,
                             model="openai/gpt-4o", recovery_charge_nanos=prompt_estimate)
    hold = await ledger.mark_forwarded(hold)        # committed before the upstream call
    ... upstream call (no transaction is open) ...
    result = await ledger.settle(hold, actual_cost)  # or: await ledger.release(hold)

Each call is one write transaction (`tollgate.store.holds` has the statements and why they cannot
overspend). A hold admits money and spending-limit room together: it needs the available credits
(balance − open holds) **and** room under every applicable limit (`tollgate.billing.limits`), or
nothing is held. The balance is checked first: `InsufficientBalance` (402) wins over
`SpendLimitExceeded` (429) when both apply.

Settling is exactly once: a second `settle`/`release` of the same hold returns the first result
(`replayed=True`) and changes nothing. Usage above the hold (an upstream that ignored
`max_tokens`) is charged in full; the balance may then go below zero, and the result says so in
`overshoot_nanos`. That is the only overspend, bounded by one request. A zero charge writes no
ledger entry; a release writes none either.

**Crash recovery policy** (`recover`, run by the app at start-up and then periodically): a hold is
abandoned when it is still open after its `expires_at` (hold time + the TTL, 15 minutes by
default). A call that may outlive the TTL must `extend` its hold now and then, or another process's
sweep would recover it while it streams (its own settle would then return the recovered result):
the meter does that for every request in flight (`Meter.keep_alive`). Then:

- **never forwarded** (no `mark_forwarded`, no `hold(forwarded=True)`): nothing reached the
  upstream, so the hold is **released** (no charge, no ledger entry);
- **forwarded**: the upstream may have billed us, and the usage is lost, so it is **settled at
  the conservative estimate stored on the hold at hold time** (`recovery_charge_nanos`; the caller
  passes the prompt-cost estimate, and it defaults to the whole held amount), flagged
  `estimated`, with a ledger note saying it was recovered.

Recovery resolves each hold through the same exactly-once claim as `settle`, so running it twice,
or from several processes at once, resolves each hold once; the report counts only what this call
resolved. `recover(all_open=True)` resolves every open hold, expired or not: only for a process
that knows it is the database's sole user (one process on SQLite, at start-up).

`check_invariants(store, account_id)` checks, in one snapshot: the balance is the sum of the
entries and each `balance_after` the running sum; `held_nanos` is the sum of open credit holds;
`leased_nanos` is the sum of the account's credit leases (`tollgate.billing.leases`);
every bucket equals the sum of its holds' current amounts (open: held, settled: charged,
released: 0); every settled credit hold with a charge has exactly one `usage` entry of `-charge`
(reference `hold:{id}`), and no other hold does; every such entry names a hold of the account,
unless maintenance pruned it (`pruned_before`); every `lease:{id}` entry (a lease-admitted request
charged its measured usage, which has no hold row: `tollgate.billing.leases`) is a usage charge,
and no hold row has its id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tollgate.billing import windows
from tollgate.billing.leases import CreditLeases
from tollgate.billing.limits import LimitSpec, account_key, belongs_to
from tollgate.billing.windows import Clock, utc_now
from tollgate.errors import Conflict, InsufficientBalance, NotFound, SpendLimitExceeded
from tollgate.money import header_dollars
from tollgate.store import holds as holds_repo
from tollgate.store import holds_sqlite
from tollgate.store import limits as limits_repo
from tollgate.store.engine import Store
from tollgate.store.holds import Hold, Settlement
from tollgate.store.leases_sqlite import LEASE_REFERENCE
from tollgate.store.ledger import AccountMissing
from tollgate.store.snapshot import AccountSnapshot, EntryRow, account_snapshot

__all__ = [
    "DEFAULT_HOLD_TTL",
    "Hold",
    "InvariantViolation",
    "Ledger",
    "RecoveryReport",
    "Settlement",
    "check_invariants",
]

DEFAULT_HOLD_TTL = timedelta(minutes=15)
RECOVERY_BATCH = 200
RECOVERY_NOTE = "recovered after a crash: forwarded, never settled; charged the hold-time estimate"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    released: int  # never forwarded: released by this call
    settled: int  # forwarded: settled at the estimate by this call
    charged_nanos: int  # the total this call charged
    already_resolved: int  # resolved by someone else meanwhile (another process's sweep)


class InvariantViolation(Exception):
    """The stored ledger, holds or buckets disagree (a money bug: stop and investigate)."""


def usd(nanos: int) -> str:
    """Exact dollars for messages: `$0.000123`, `-$1.5`."""
    return f"-${header_dollars(-nanos)}" if nanos < 0 else f"${header_dollars(nanos)}"


def _nanos(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer of nano-dollars; got {value!r}")
    return value


class Ledger:
    """Holds, settlements, recovery. `clock` returns aware UTC datetimes (injected in tests)."""

    def __init__(
        self,
        store: Store,
        clock: Clock = utc_now,
        *,
        hold_ttl: timedelta = DEFAULT_HOLD_TTL,
        leases: CreditLeases | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hold_ttl = hold_ttl
        # SQLite's data plane: Unified Billing holds without limits are admitted against a
        # credit lease in memory and settled in batches (tollgate.billing.leases).
        self.leases = leases
        if leases is not None:
            leases.clock = clock  # its settlement batches are stamped with the ledger's time
        # SQLite: the group-committing hot writer; PostgreSQL: one SQLAlchemy transaction each.
        sqlite = store.dialect == "sqlite"
        self._create_hold = holds_sqlite.create_hold if sqlite else holds_repo.create_hold
        self._resolve_hold = holds_sqlite.resolve_hold if sqlite else holds_repo.resolve_hold

    async def hold(
        self,
        account_id: str,
        request_id: str,
        amount_nanos: int,
        *,
        gateway_id: str | None = None,
        limits: Sequence[LimitSpec] = (),
        model: str | None = None,
        recovery_charge_nanos: int | None = None,
        uses_credits: bool = True,
        ttl: timedelta | None = None,
        forwarded: bool = False,
    ) -> Hold:
        """Hold `amount_nanos` against the credits and every limit in `limits`, atomically.

        `uses_credits=False` (BYOK with a known price) counts toward the limits only.
        `forwarded=True` marks the hold forwarded at once, saving the `mark_forwarded` write; a
        crash before the upstream call then settles it at `recovery_charge_nanos` instead of
        releasing it (conservative: it may charge a call that was never made). A repeated
        `request_id` returns the existing hold if it is the same account and amount.
        Raises `InsufficientBalance` (402), `SpendLimitExceeded` (429), `NotFound` (no account),
        `Conflict` (request id reused for something else).
        """
        _nanos(amount_nanos, "amount_nanos")
        recovery = amount_nanos if recovery_charge_nanos is None else recovery_charge_nanos
        if _nanos(recovery, "recovery_charge_nanos") > amount_nanos:
            raise ValueError("recovery_charge_nanos cannot exceed the held amount")
        if limits and len({spec.key for spec in limits}) != len(limits):
            raise ValueError("two limits share a key")
        if limits and not all(belongs_to(spec.key, account_id) for spec in limits):
            raise ValueError("a limit key of another account")  # see store.holds: serialisation
        now = self.clock()
        expires_at = now + (ttl or self.hold_ttl)
        try:
            if self.leases is not None and uses_credits and not limits and forwarded:
                return await self.leases.hold(
                    account_id,
                    request_id,
                    amount_nanos,
                    recovery,
                    gateway_id=gateway_id,
                    model=model,
                    now=now,
                    expires=expires_at,
                )
            spans = [windows.span(spec.window, now) for spec in limits]
            checks = [
                limits_repo.LimitCheck(
                    spec.key, spec.limit_nanos, span.bucket_start, span.count_from, span.count_until
                )
                for spec, span in zip(limits, spans, strict=True)
            ]
            new = holds_repo.NewHold(
                account_id=account_id,
                request_id=request_id,
                amount_nanos=amount_nanos,
                recovery_charge_nanos=recovery,
                uses_credits=uses_credits,
                gateway_id=gateway_id,
                model=model,
                created_at=now,
                expires_at=expires_at,
                checks=tuple(checks),
                forwarded=forwarded,
            )
            try:
                return await self._create_hold(self.store, new)
            except holds_repo.InsufficientFunds:
                # This process's idle lease may hold the credit this hold needs: give it back.
                if self.leases is None or not await self.leases.give_back(account_id):
                    raise
                return await self._create_hold(self.store, new)
        except holds_repo.InsufficientFunds as exc:
            raise InsufficientBalance(
                f"Insufficient credits: this request needs up to {usd(exc.needed_nanos)} and "
                f"{usd(exc.available_nanos)} is available. Add credits, or lower max_tokens.",
                needed_nanos=exc.needed_nanos,
                available_nanos=exc.available_nanos,
            ) from None
        except limits_repo.LimitsRefused as exc:
            raise _limit_error(exc, limits, now, amount_nanos) from None
        except AccountMissing:
            raise NotFound(f"account {account_id} not found", code="account_not_found") from None
        except holds_repo.RequestAlreadyHeld as exc:
            existing = exc.existing
            if existing.account_id == account_id and existing.amount_nanos == amount_nanos:
                return existing
            raise Conflict(f"request id {request_id!r} already has a different hold") from None

    async def mark_forwarded(self, hold: Hold) -> Hold:
        """Record, before the upstream call, that it is being made (changes the recovery policy)."""
        if self.leases is not None and self.leases.owns(hold):
            return hold  # journaled before the call: recovery treats it as forwarded
        return await holds_repo.mark_forwarded(self.store, hold.id, self.clock())

    async def extend(self, hold: Hold, ttl: timedelta | None = None) -> Hold:
        """Keep a long call's hold from being recovered: expiry = now + `ttl` (default TTL)."""
        expires_at = self.clock() + (ttl or self.hold_ttl)
        return await holds_repo.extend_hold(self.store, hold.id, expires_at)

    async def extend_many(self, holds: Sequence[Hold], ttl: timedelta | None = None) -> int:
        """`extend` for many holds in one transaction (the meter's keep-alive); returns how many
        were still open."""
        expires_at = self.clock() + (ttl or self.hold_ttl)
        leased = 0
        if self.leases is not None:
            await self.leases.extend()
            own = [h for h in holds if self.leases.owns(h)]  # in the journal, not in `holds`
            leased, holds = len(own), [h for h in holds if not self.leases.owns(h)]
        if not holds:
            return leased
        return leased + await holds_repo.extend_holds(self.store, [h.id for h in holds], expires_at)

    async def settle(
        self,
        hold: Hold,
        actual_nanos: int,
        *,
        estimated: bool = False,
        note: str = "",
        wait_for_commit: bool = True,
    ) -> Settlement:
        """Charge `actual_nanos` (measured, or `estimated`) and release the rest of the hold.
        `wait_for_commit=False` (the data plane): a lease-admitted hold's result may return once
        it is journaled, before its batch commits (`tollgate.billing.leases`)."""
        _nanos(actual_nanos, "actual_nanos")
        return await self._resolve(hold, actual_nanos, estimated, note, wait_for_commit)

    async def release(self, hold: Hold, *, wait_for_commit: bool = True) -> Settlement:
        """Nothing was produced: no charge, no entry; the held amount and buckets restored."""
        return await self._resolve(hold, None, False, "", wait_for_commit)

    async def _resolve(
        self, hold: Hold, charge: int | None, estimated: bool, note: str, wait: bool = True
    ) -> Settlement:
        leases = self.leases
        if leases is not None:
            if leases.owns(hold):
                return await leases.resolve(
                    hold, charge, estimated=estimated, note=note, wait_for_commit=wait
                )
            if leases.unwritten(hold):  # a repeat: its first result is still being written
                await leases.flush()
        try:
            return await self._resolve_hold(
                self.store,
                hold,
                charge_nanos=charge,
                estimated=estimated,
                note=note,
                resolved_at=self.clock(),
            )
        except holds_repo.HoldMissing:
            # A lease-admitted request charged its measured usage has no hold row: its first
            # settlement is its `lease:` entry.
            if leases is None or (first := await leases.settled_before(hold)) is None:
                raise
            return first

    async def recover(
        self, now: datetime | None = None, *, all_open: bool = False
    ) -> RecoveryReport:
        """Resolve abandoned holds by the policy in the module docstring."""
        cutoff = None if all_open else (now or self.clock())
        released = settled = charged = already = 0
        if self.leases is not None:  # dead processes' journals first (their leases with them)
            settled, charged = await self.leases.recover_dead(RECOVERY_NOTE)
        seen: set[str] = set()
        while True:
            batch = await holds_repo.open_holds(self.store, expired_by=cutoff, limit=RECOVERY_BATCH)
            batch = [hold for hold in batch if hold.id not in seen]
            if not batch:
                break
            for hold in batch:
                seen.add(hold.id)
                if hold.forwarded_at is None:
                    result = await self.release(hold)
                else:
                    result = await self._resolve_hold(
                        self.store,
                        hold,
                        charge_nanos=hold.recovery_charge_nanos,
                        estimated=True,
                        note=RECOVERY_NOTE,
                        resolved_at=self.clock(),
                    )
                if result.replayed:
                    already += 1
                elif result.state == "released":
                    released += 1
                else:
                    settled += 1
                    charged += result.charged_nanos
        return RecoveryReport(released, settled, charged, already)

    async def available(self, account_id: str) -> int:
        """Credits available to a new hold: balance − open holds − leases, plus what this
        process's own lease has not admitted against (negative after an overshoot)."""
        unused = self.leases.unused(account_id) if self.leases is not None else 0
        try:
            return unused + await holds_repo.available_nanos(self.store, account_id)
        except AccountMissing:
            raise NotFound(f"account {account_id} not found", code="account_not_found") from None

    async def spent(self, spec: LimitSpec, now: datetime | None = None) -> int:
        """Spend (held or charged) counted toward `spec` in its window at `now`."""
        span = windows.span(spec.window, now or self.clock())
        return await limits_repo.window_spend(
            self.store, spec.key, span.count_from, span.count_until
        )


def _limit_error(
    exc: limits_repo.LimitsRefused, limits: Sequence[LimitSpec], now: datetime, amount: int
) -> SpendLimitExceeded:
    by_key = {spec.key: spec for spec in limits}
    retry_after, reset_at, parts, labels = 0, now, [], []
    for shortfall in exc.shortfalls:
        spec = by_key[shortfall.key]
        when = windows.refusal(spec.window, now, shortfall.buckets, spec.limit_nanos, amount)
        retry_after = max(retry_after, when.retry_after)
        reset_at = max(reset_at, when.reset_at)
        labels.append(spec.label)
        if amount > spec.limit_nanos:
            parts.append(
                f"the {spec.label} allows {usd(spec.limit_nanos)} per {spec.window.describe()}, "
                f"less than this request's maximum cost {usd(amount)}; lower max_tokens"
            )
        else:
            parts.append(
                f"the {spec.label} allows {usd(spec.limit_nanos)} per {spec.window.describe()} "
                f"and {usd(shortfall.spent_nanos)} is spent or held"
            )
    stamp = reset_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return SpendLimitExceeded(
        f"Spending limit exceeded: {'; '.join(parts)}. This request may cost up to {usd(amount)}. "
        f"Retry after {retry_after} s ({stamp}), or raise the limit.",
        retry_after=retry_after,
        reset_at=reset_at,
        limits=tuple(labels),
    )


def _expected_buckets(snapshot: AccountSnapshot) -> dict[tuple[str, int], int]:
    expected: dict[tuple[str, int], int] = defaultdict(int)
    for hold in snapshot.holds:
        resolution = snapshot.resolutions.get(hold.id)
        current = hold.amount_nanos if resolution is None else resolution.charged_nanos
        for ref in hold.buckets:
            expected[ref] += current
    return expected


def _ledger_problems(snapshot: AccountSnapshot, pruned_before: datetime | None) -> list[str]:
    problems: list[str] = []
    running = 0
    for entry in snapshot.entries:
        running += entry.amount_nanos
        if entry.balance_after_nanos != running:
            problems.append(
                f"entry {entry.id}: balance_after {entry.balance_after_nanos} != {running}"
            )
    if running != snapshot.balance_nanos:
        problems.append(f"balance {snapshot.balance_nanos} != sum of entries {running}")
    held = sum(h.amount_nanos for h in snapshot.holds if h.state == "open" and h.uses_credits)
    if held != snapshot.held_nanos:
        problems.append(f"held_nanos {snapshot.held_nanos} != sum of open holds {held}")
    if snapshot.leased_nanos != snapshot.lease_rows_nanos:
        problems.append(
            f"leased_nanos {snapshot.leased_nanos} != sum of credit leases "
            f"{snapshot.lease_rows_nanos}"
        )
    usage: dict[str | None, EntryRow] = {
        e.reference: e for e in snapshot.entries if (e.reference or "").startswith("hold:")
    }
    for hold in snapshot.holds:
        found = usage.pop(f"hold:{hold.id}", None)
        resolution = snapshot.resolutions.get(hold.id)
        charged = resolution.charged_nanos if resolution and hold.uses_credits else 0
        if charged and (
            found is None
            or found.kind != "usage"
            or found.amount_nanos != -charged
            or found.id != (resolution.ledger_entry_id if resolution else None)
        ):
            problems.append(f"hold {hold.id}: charged {charged}, ledger entry {found}")
        elif not charged and found is not None:
            problems.append(f"hold {hold.id}: nothing charged but ledger entry {found}")
    problems.extend(_lease_entry_problems(snapshot))
    problems.extend(
        f"ledger entry {e.id} names no hold of this account"
        for e in usage.values()
        if pruned_before is None or e.created_at >= pruned_before  # else its hold was pruned
    )
    return problems


def _lease_entry_problems(snapshot: AccountSnapshot) -> list[str]:
    """A `lease:` entry is a usage charge, and its request has no hold row as well."""
    problems = []
    hold_ids = {hold.id for hold in snapshot.holds}
    for entry in snapshot.entries:
        reference = entry.reference or ""
        if not reference.startswith(LEASE_REFERENCE):
            continue
        if entry.kind != "usage" or entry.amount_nanos >= 0:
            problems.append(f"ledger entry {entry.id} of a leased request is not a usage charge")
        hold_id = reference.removeprefix(LEASE_REFERENCE)
        if hold_id in hold_ids:  # a leased request is one entry, or a hold row: never both
            problems.append(f"ledger entry {entry.id}: hold {hold_id} also has a row")
    return problems


async def check_invariants(
    store: Store, account_id: str, *, pruned_before: datetime | None = None
) -> AccountSnapshot:
    """Check every ledger, hold and bucket invariant of one account; raise `InvariantViolation`.

    `pruned_before`: maintenance deleted the holds resolved before this moment
    (`tollgate.billing.maintenance`), so a `usage` entry written before it may name a hold that
    no longer exists. Every other check is unchanged: the entries still sum to the balance."""
    own = account_key(account_id)
    gateway_prefix = f"gateway:{account_id}:"
    snapshot = await account_snapshot(store, account_id, [own, gateway_prefix])
    stored = {ref: n for ref, n in snapshot.buckets.items() if belongs_to(ref[0], account_id)}
    problems = _ledger_problems(snapshot, pruned_before)
    expected = _expected_buckets(snapshot)
    for ref in sorted(set(expected) | set(stored)):
        if stored.get(ref, 0) != expected.get(ref, 0):
            problems.append(
                f"bucket {ref}: {stored.get(ref, 0)} != sum of its holds {expected.get(ref, 0)}"
            )
    if problems:
        raise InvariantViolation(f"account {account_id}: " + "; ".join(problems))
    return snapshot
