"""A Hypothesis stateful test of the ledger against an in-memory model (issue 9): random grants
and top-ups, holds, settlements (measured, estimated, zero, above the hold), releases, repeated
settlements, and process crashes followed by a new process's recovery. Real SQLite files, a real
journal; one fresh database per example.

Two variants of one state machine:

- `TestLedgerWithCreditLeases`: the data plane's path on SQLite (`CreditLeases`): holds admitted
  in memory against a lease, settlements batched, some answered before their commit;
- `TestLedgerHoldPath`: the same ledger without leases: every hold and settlement a write.

(Not on PostgreSQL: a database per example would cost more than the rest of the file, and the
hold path's statements there are covered by `test_ledger.py` and `test_ledger_concurrency.py`.)

The model knows the balance, the open holds (amount, recovery charge, forwarded) and how every
resolved hold was resolved (state, charge, estimated flag, the reference of its usage entry, the
first result its caller got). After every step, on the books as another process would read
them (committed, no flush):

- `check_invariants` passes (entries sum to the balance, held and leased match their rows, one
  usage entry per charged hold...);
- the balance is the model's plus the charges answered first and not committed yet (those a
  crash must recover exactly as answered); the in-process reader's flush makes them equal;
- the grants and top-ups are the model's, in order; the usage entries are exactly the model's
  charged requests (count, reference, amount, and the ledger entry id each caller was told);
- resolved hold rows say what the model says; open holds are held (hold path) or leased (credit
  leases) and nothing is admitted beyond the balance (balance − held − leased ≥ 0, and the lease
  covers what is in flight and queued) unless a charge went above its hold (overshoot);
- `Ledger.available` is the model's balance minus its open holds.

A hold is refused (402) exactly when the model's available credit cannot cover it, with the
amounts the model expects. A repeated settle or release returns the first result, replayed. A
crash recovers each in-flight forwarded hold at its recovery charge (flagged estimated), each
never-forwarded one released, and each answered-but-uncommitted settlement as answered.

Where the two paths knowingly differ, the model follows each: a lease-admitted request settled
at zero is written as a released hold (the hold path: `settled`, flag kept); an answer given
before its commit carries the process's view of the balance (blind to a top-up since its lease
last wrote), so only its replay is compared with the books. Two differences are left out of the
model, not hidden (see `LeasedLedgerMachine.hold` and `_check_available`): a zero hold admitted
by a lease at a negative balance, and the credit reported available after an overshoot.

Cost: `max_examples` 40 (`TOLLGATE_HYPOTHESIS_EXAMPLES`, e.g. 1000 nightly) of up to 30 steps
per variant, no deadline: about 15 s per variant on 2 idle cores. Shrinking a failure can take
Hypothesis's 5 minutes, hence this file's own pytest timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.billing.test_ledger import FakeClock, new_account
from tollgate.billing.leases import CreditLeases
from tollgate.billing.ledger import Ledger, check_invariants
from tollgate.errors import InsufficientBalance
from tollgate.store import Store
from tollgate.store import ledger as ledger_repo
from tollgate.store.holds import Hold, Settlement
from tollgate.store.migrate import migrate

T = TypeVar("T")
TTL = timedelta(minutes=15)
# Answered-first settlements stay queued until something commits them (a waiting settle, a
# reader's flush) or a crash loses the queue: the window recovery must cover, made deterministic.
SETTLE_INTERVAL = 60.0
LINGER = 600.0  # no idle lease is given back behind the model's back
EXAMPLES = int(os.environ.get("TOLLGATE_HYPOTHESIS_EXAMPLES", "40"))
# A failure is shrunk for up to Hypothesis's 300 s: pytest-timeout must not interrupt that (its
# signal, raised inside an event loop callback, can leave the loop waiting forever).
pytestmark = pytest.mark.timeout(420 + EXAMPLES)

MAX_HOLD = 2_000_000
credits = st.integers(1, 3_000_000)
percents = st.integers(0, 100)


@functools.cache
def migrated_template() -> Path:
    """One migrated database per test process, copied for each example (migrating costs more
    than a short example)."""
    directory = Path(tempfile.mkdtemp(prefix="tollgate-ledger-template-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "template.db"

    async def build() -> None:
        store = Store(f"sqlite:///{path}")
        try:
            await migrate(store)
        finally:
            await store.close()

    asyncio.run(build())
    assert not Path(f"{path}-wal").exists()  # the last connection folded its WAL into the file
    return path


@dataclass
class Open:
    hold: Hold
    forwarded: bool


@dataclass
class Resolved:
    hold: Hold
    state: str
    charged: int
    estimated: bool
    reference: str | None  # its usage entry's reference; None when nothing was charged
    first: Settlement | None  # the result its caller got; None: resolved by a crash's recovery
    exact_balance: bool  # False: answered first, its balance is the process's view


class LedgerMachine(RuleBasedStateMachine):
    """The ledger of one account, driven through `Ledger`, checked against the model. This base
    runs the hold path (no credit leases)."""

    LEASES = False

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = tempfile.mkdtemp(prefix="tollgate-ledger-stateful-")
        path = Path(self.directory) / "ledger.db"
        shutil.copyfile(migrated_template(), path)
        self.url = f"sqlite:///{path}"
        self.clock = FakeClock()
        self.store = Store(self.url)
        self.account_id = self.run(new_account(self.store, 0))
        self.leases: CreditLeases | None = None
        self.ledger = self._process()
        # The model.
        self.balance = 0
        self.credits: list[int] = []  # grant and top-up amounts, in order
        self.open: dict[str, Open] = {}
        self.resolved: dict[str, Resolved] = {}
        self.answered: set[str] = set()  # answered first; maybe not committed yet
        self.overshot = False  # a charge went above its hold: the balance may go below holds
        self.requests = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def _process(self) -> Ledger:
        """A gateway process over `self.store` (reads are not wired to flush: see the invariant)."""
        if not self.LEASES:
            return Ledger(self.store, self.clock, hold_ttl=TTL)
        self.leases = CreditLeases(
            self.store, hold_ttl=TTL, linger=LINGER, settle_interval=SETTLE_INTERVAL
        )
        return Ledger(self.store, self.clock, hold_ttl=TTL, leases=self.leases)

    def teardown(self) -> None:
        with contextlib.ExitStack() as cleanup:  # each step runs even if one before it fails
            cleanup.callback(shutil.rmtree, self.directory, ignore_errors=True)
            cleanup.callback(self.runner.close)
            cleanup.callback(lambda: self.run(self.store.close()))
            if self.leases is not None:
                self.run(self.leases.close())

    # --- what the model expects -------------------------------------------------------------

    def _outcome(self, charge: int | None, estimated: bool) -> tuple[str, bool]:
        """(state, estimated flag) of a hold settled at `charge` (None: released). A lease-admitted
        request settled at zero is written as a released hold row; the hold path keeps it
        `settled`, with the flag as given."""
        if charge is None or (self.leases is not None and charge == 0):
            return "released", False
        return "settled", estimated

    def _reference(self, hold_id: str, charge: int, estimated: bool) -> str | None:
        if not charge:
            return None
        # A lease-admitted request charged its measured usage is one `lease:` entry (no hold row).
        lease = self.leases is not None and not estimated
        return f"{'lease:' if lease else 'hold:'}{hold_id}"

    def _unwritten(self) -> set[str]:
        """The model's answered settlements that the live process has not committed yet."""
        leases = self.leases
        self.answered = {
            h
            for h in self.answered
            if leases is not None and leases.unwritten(self.resolved[h].hold)
        }
        return self.answered

    def _pick(self, data: st.DataObject, ids: dict[str, Any], label: str) -> str:
        return data.draw(st.sampled_from(list(ids)), label=label)

    # --- rules ------------------------------------------------------------------------------

    @initialize(amount=st.integers(0, 5_000_000))
    def first_grant(self, amount: int) -> None:
        if amount:
            self.add_credits("grant", amount)

    @rule(kind=st.sampled_from(["topup", "grant"]), amount=credits)
    def add_credits(self, kind: str, amount: int) -> None:
        reference = f"credit-{len(self.credits)}"
        entry, created = self.run(
            ledger_repo.append_entry(
                self.store, self.account_id, kind=kind, amount_nanos=amount, reference=reference
            )
        )
        assert created and entry.amount_nanos == amount
        self.balance += amount
        self.credits.append(amount)

    @rule(amount=st.integers(0, MAX_HOLD), recovery_percent=percents, forwarded=st.booleans())
    def hold(self, amount: int, recovery_percent: int, forwarded: bool) -> None:
        self._hold(amount, recovery_percent, forwarded)

    def _hold(self, amount: int, recovery_percent: int, forwarded: bool) -> None:
        recovery = amount * recovery_percent // 100
        available = self.balance - sum(o.hold.amount_nanos for o in self.open.values())
        self.requests += 1
        try:
            hold = self.run(
                self.ledger.hold(
                    self.account_id,
                    f"req-{self.requests}",
                    amount,
                    recovery_charge_nanos=recovery,
                    forwarded=forwarded,
                )
            )
        except InsufficientBalance as refused:
            assert amount > available, f"refused {amount} with {available} available"
            assert refused.needed_nanos == amount
            self._check_available(refused.available_nanos, available)
            event("hold refused")
            return
        assert amount <= available, f"admitted {amount} with only {available} available"
        assert (hold.amount_nanos, hold.recovery_charge_nanos, hold.state) == (
            amount,
            recovery,
            "open",
        )
        self.open[hold.id] = Open(hold, forwarded)

    @precondition(lambda self: self.open)
    @rule(
        data=st.data(),
        shape=st.sampled_from(["within", "within", "zero", "overshoot"]),
        estimated=st.booleans(),
        wait=st.booleans(),
    )
    def settle(self, data: st.DataObject, shape: str, estimated: bool, wait: bool) -> None:
        hold = self.open.pop(self._pick(data, self.open, "hold")).hold
        amount = hold.amount_nanos
        if shape == "overshoot":
            charge = data.draw(st.integers(amount + 1, 2 * amount + 1_000_000), label="charge")
        else:
            charge = 0 if shape == "zero" else data.draw(st.integers(0, amount), label="charge")
        result = self.run(
            self.ledger.settle(hold, charge, estimated=estimated, wait_for_commit=wait)
        )
        self.balance -= charge
        self.overshot |= charge > amount
        if charge > amount:
            event("overshoot")
        self._resolved(hold, result, charge, estimated, wait)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), wait=st.booleans())
    def release(self, data: st.DataObject, wait: bool) -> None:
        hold = self.open.pop(self._pick(data, self.open, "hold")).hold
        result = self.run(self.ledger.release(hold, wait_for_commit=wait))
        self._resolved(hold, result, None, False, wait)

    def _resolved(
        self, hold: Hold, result: Settlement, charge: int | None, estimated: bool, wait: bool
    ) -> None:
        state, flagged = self._outcome(charge, estimated)
        charged = charge or 0
        assert (result.hold_id, result.state, result.charged_nanos, result.held_nanos) == (
            hold.id,
            state,
            charged,
            hold.amount_nanos,
        )
        overshoot = max(0, charged - hold.amount_nanos)
        assert (result.overshoot_nanos, result.estimated, result.replayed) == (
            overshoot,
            flagged,
            False,
        )
        assert (result.ledger_entry_id is not None) == (charged > 0)
        answered = self.leases is not None and self.leases.unwritten(hold)
        if answered:
            # Only a lone request that does not wait is answered before its commit, and its
            # balance is the process's view: blind to credits added since its lease last wrote.
            assert not wait and not self.open
            assert result.balance_after_nanos is not None
            assert result.balance_after_nanos <= self.balance
            self.answered.add(hold.id)
            event("answered before its commit")
        else:
            assert result.balance_after_nanos == self.balance
            if self.leases is not None:  # a waiting caller's commit takes the queue with it
                assert not self._unwritten()
        self.resolved[hold.id] = Resolved(
            hold,
            state,
            charged,
            flagged,
            self._reference(hold.id, charged, flagged),
            result,
            exact_balance=not answered,
        )

    @precondition(lambda self: self.resolved)
    @rule(data=st.data(), how=st.sampled_from(["settle", "release"]), wait=st.booleans())
    def repeat(self, data: st.DataObject, how: str, wait: bool) -> None:
        known = self.resolved[self._pick(data, self.resolved, "resolved hold")]
        if how == "settle":
            charge = data.draw(st.integers(0, 3_000_000), label="charge")
            again = self.run(self.ledger.settle(known.hold, charge, wait_for_commit=wait))
        else:
            again = self.run(self.ledger.release(known.hold, wait_for_commit=wait))
        assert again.replayed
        first = known.first
        if first is not None:
            if not known.exact_balance:  # the books' balance after it, not the answer's view
                first = replace(first, balance_after_nanos=again.balance_after_nanos)
            assert again == replace(first, replayed=True)
        else:  # recovered after a crash: what recovery wrote
            assert (again.hold_id, again.state, again.charged_nanos, again.estimated) == (
                known.hold.id,
                known.state,
                known.charged,
                known.estimated,
            )
            assert (again.ledger_entry_id is not None) == (known.charged > 0)
        known.first, known.exact_balance = again, True

    @rule()
    def crash_and_recover(self) -> None:
        """The process dies (its queue and open holds with it); a new one starts and recovers."""
        unwritten = self._unwritten()
        lost = sum(self.resolved[h].charged for h in unwritten)
        if unwritten:
            event("crash with answered settlements not committed")
        if self.open:
            event("crash with holds in flight")
        self.run(self._crash())
        self.ledger = self._process()
        report = self.run(self.ledger.recover(all_open=True))  # SQLite's start-up
        forwarded = [o.hold for o in self.open.values() if o.forwarded]
        recovered = sum(h.recovery_charge_nanos for h in forwarded)
        assert (report.settled, report.charged_nanos, report.already_resolved) == (
            len(forwarded) + len(unwritten),
            recovered + lost,
            0,
        )
        assert report.released == len(self.open) - len(forwarded)
        for hold_id, o in self.open.items():
            charge = o.hold.recovery_charge_nanos if o.forwarded else None
            state, flagged = self._outcome(charge, True)
            reference = self._reference(hold_id, charge or 0, flagged)
            self.resolved[hold_id] = Resolved(
                o.hold, state, charge or 0, flagged, reference, None, exact_balance=False
            )
        self.balance -= recovered
        self.open.clear()
        self.answered.clear()
        books = self.run(check_invariants(self.store, self.account_id))
        assert (books.held_nanos, books.leased_nanos) == (0, 0)

    async def _crash(self) -> None:
        """Killed: nothing more is written, the journal's files and lock are left as they are."""
        leases = self.leases
        if leases is not None:
            for task in list(leases._writing):
                task.cancel()
            for lease in leases._leases.values():
                if lease.idle_timer is not None:
                    lease.idle_timer.cancel()
            await asyncio.sleep(0)  # the cancelled tasks end before the store closes
            if leases._journal is not None:
                leases._journal.close(remove=False)
        await self.store.close()  # its connections: a new process opens its own
        self.store = Store(self.url)

    # --- after every step ---------------------------------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        self.run(self._check_books())

    async def _check_books(self) -> None:
        books = await check_invariants(self.store, self.account_id)  # committed: no flush
        unwritten = self._unwritten()
        pending = sum(self.resolved[h].charged for h in unwritten)
        assert books.balance_nanos == self.balance + pending
        assert [e.amount_nanos for e in books.entries if e.kind in ("grant", "topup")] == (
            self.credits
        )
        usage = [e for e in books.entries if e.kind == "usage"]
        expected = {
            r.reference: r
            for hold_id, r in self.resolved.items()
            if r.reference is not None and hold_id not in unwritten
        }
        assert len(usage) == len(expected)
        assert {e.reference: -e.amount_nanos for e in usage} == {
            ref: r.charged for ref, r in expected.items()
        }
        for entry in usage:
            first = expected[entry.reference or ""].first
            assert first is None or first.ledger_entry_id == entry.id
        # A hold row for every resolved hold, but a lease-admitted one charged its measured usage.
        with_row = {
            hold_id
            for hold_id, r in self.resolved.items()
            if hold_id not in unwritten
            and (self.leases is None or r.state == "released" or r.estimated)
        }
        assert set(books.resolutions) == with_row
        for hold_id, row in books.resolutions.items():
            r = self.resolved[hold_id]
            assert (row.state, row.charged_nanos, row.estimated) == (
                r.state,
                r.charged,
                r.estimated,
            )
        rows = {h.id for h in books.holds if h.state == "open"}
        open_sum = sum(o.hold.amount_nanos for o in self.open.values())
        if self.leases is None:
            assert rows == set(self.open)
            assert (books.held_nanos, books.leased_nanos) == (open_sum, 0)
        else:
            assert rows == set() and books.held_nanos == 0  # admitted in memory, journaled
            assert self.overshot or books.leased_nanos >= open_sum + pending
        room = books.balance_nanos - books.held_nanos - books.leased_nanos
        assert self.overshot or room >= 0, f"admitted beyond the balance: {room}"
        self._check_available(await self.ledger.available(self.account_id), self.balance - open_sum)

    def _check_available(self, reported: int, available: int) -> None:
        """`available` is the model's: the balance minus the open holds. With leases, after an
        overshoot, the charge may have taken more out of the lease than it had left beyond the
        other requests in flight (the batch's cut is the whole charge, up to the lease), so the
        books no longer count those requests and the reported credit is higher by up to what
        is in flight and queued. Admission stays exact (`hold` checks the model's rule)."""
        if self.leases is None or not self.overshot:
            assert reported == available
        else:
            in_flight = sum(o.hold.amount_nanos for o in self.open.values())
            queued = sum(self.resolved[h].charged for h in self._unwritten())
            assert available <= reported <= available + in_flight + queued


class LeasedLedgerMachine(LedgerMachine):
    """The data plane's path: credit leases, and an in-process reader that flushes first."""

    LEASES = True

    # Forwarded: the lease path admits forwarded holds only (others take the hold path, whose
    # refusals then depend on whether the lease is idle: not this model's). Not zero: a lease
    # with no credit left admits a zero hold at a negative balance, which the hold path refuses
    # (402); harmless, since it can only be charged an overshoot, but not the model's rule.
    @rule(amount=st.integers(1, MAX_HOLD), recovery_percent=percents)
    def hold(self, amount: int, recovery_percent: int) -> None:  # type: ignore[override]
        self._hold(amount, recovery_percent, forwarded=True)

    @rule()
    def read_the_books_in_process(self) -> None:
        """An API read in the live process flushes the queue first (`Store.before_read`)."""
        assert self.leases is not None
        self.store.before_read = self.leases.flush
        try:
            books = self.run(check_invariants(self.store, self.account_id))
        finally:
            self.store.before_read = None
        assert not self._unwritten()
        assert books.balance_nanos == self.balance


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None)

TestLedgerWithCreditLeases = LeasedLedgerMachine.TestCase
TestLedgerWithCreditLeases.settings = SETTINGS
TestLedgerHoldPath = LedgerMachine.TestCase
TestLedgerHoldPath.settings = SETTINGS
