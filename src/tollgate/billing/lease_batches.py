"""Settlement batches of the credit leases (`tollgate.billing.leases`): queue, write, retry.

A resolved lease-admitted request is queued (`Queued`) and written with the others of its batch in
one transaction (`leases_sqlite.settle_groups`). `SettlementBatches` is the part of
`CreditLeases` that decides when a batch is written (`_schedule`: the soonest due write wins; a
write still asleep is replaced by a sooner one), writes it and does the bookkeeping after the
commit (the leases' amounts and balances, the journal, the callers waiting), and what happens when
a write fails: callers waiting see the error; requests already answered are queued again and
retried, backing off (`RETRY_FIRST` doubling to `RETRY_MAX`). `flush` commits everything queued:
same-process readers call it first (`Store.before_read`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

from tollgate.billing.windows import Clock
from tollgate.store import leases_sqlite
from tollgate.store.engine import Store
from tollgate.store.holds import Hold, Settlement, first_settlement
from tollgate.store.holds_sqlite import stamp
from tollgate.store.journal import Admitted, Journal

log = logging.getLogger(__name__)

FLUSH_ATTEMPTS = 3  # a reader's flush tries a failing batch this often before reading anyway
RETRY_FIRST, RETRY_MAX = 0.05, 5.0  # seconds between attempts at a failing batch (doubling)


class RequestIdReused(Exception):
    """A lease-admitted request's id was already used by another hold: it cannot be written.
    (The meter's request ids are fresh; only a caller reusing one meets this.)"""


@dataclass(slots=True)
class Lease:
    account_id: str
    lease_id: str
    amount: int = 0  # reserved in the database (`credit_leases.amount_nanos`)
    in_flight: int = 0  # the amounts of the admitted requests not yet resolved
    count: int = 0  # how many requests that is
    pending: int = 0  # charges resolved but not yet committed (they will come out of `amount`)
    balance: int | None = None  # the account's balance at this lease's last write
    growing: asyncio.Future[None] | None = None
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def free(self) -> int:
        return self.amount - self.in_flight - self.pending


@dataclass(slots=True)
class OpenRequest:
    lease: Lease
    hold: Hold
    admitted: Admitted


@dataclass(slots=True)
class Queued:
    open: OpenRequest
    item: leases_sqlite.Resolved
    done: asyncio.Future[Settlement] | None = field(repr=False)  # None: answered already


class SettlementBatches:
    """The batch writer `CreditLeases` inherits; the state it works on is set up there."""

    store: Store
    clock: Clock
    _queue: list[Queued]
    _flushing: asyncio.Task[None] | None
    _due: float
    _writing: set[asyncio.Task[None]]
    _answered: set[str]
    _waiting: int
    _retry_delay: float

    def _journal_now(self) -> Journal:
        raise NotImplementedError

    def _idle(self, lease: Lease) -> None:
        raise NotImplementedError

    def _schedule(self, delay: float) -> None:
        """Write the queue in `delay` seconds, or sooner if a write is due sooner already."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._flushing is not None:
            if self._due <= due:
                return
            self._flushing.cancel()  # still asleep: it has not taken the queue yet
        self._due = due
        self._flushing = task = loop.create_task(self._flush(delay))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _flush(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._flushing = None
        queued, self._queue = self._queue, []
        if queued:
            await self._write(queued)

    async def flush(self) -> None:
        """Commit every settlement queued so far (those answered before their commit too).
        Same-process readers of the books call this first (`Store.before_read`). A batch that
        keeps failing is left queued for its retries after `FLUSH_ATTEMPTS`."""
        for _ in range(FLUSH_ATTEMPTS):
            if self._queue:
                self._schedule(0.0)
            if not self._writing:
                return
            await asyncio.wait(set(self._writing))

    async def _write(self, queued: list[Queued]) -> None:
        """Write `queued` in one transaction and answer each caller."""
        by_lease: dict[str, tuple[Lease, list[Queued]]] = {}
        for entry in queued:
            lease = entry.open.lease
            by_lease.setdefault(lease.lease_id, (lease, []))[1].append(entry)
        groups = []
        for lease_id, (lease, entries) in by_lease.items():
            total = sum(q.item.charge_nanos for q in entries)
            # The charges come out of the lease, but never what it must keep for the requests
            # still in flight and the charges queued after this batch: after an overshoot the
            # excess comes out of the balance alone, so the books still count those requests.
            keep = lease.in_flight + lease.pending - total
            cut = min(total, max(0, lease.amount - keep))
            groups.append((lease_id, lease.account_id, [q.item for q in entries], cut))
        now = stamp(self.clock())
        try:
            await self.store.hot().run(partial(leases_sqlite.settle_groups, groups=groups, now=now))
        except leases_sqlite.RowRefused:
            # One request's row was refused (a request id used before): write them one by one,
            # so only that one fails.
            if len(queued) > 1:
                for entry in queued:
                    await self._write([entry])
                return
            self._refused(queued[0])
            return
        except BaseException as exc:
            self._failed(queued, by_lease, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._written(queued, by_lease, groups)

    def _written(
        self,
        queued: list[Queued],
        by_lease: dict[str, tuple[Lease, list[Queued]]],
        groups: list[tuple[str, str, list[leases_sqlite.Resolved], int]],
    ) -> None:
        """The batch is committed: the leases' books, the journal, and the waiting callers."""
        self._retry_delay = 0.0
        journal = self._journal_now()
        for (lease, entries), (_, _, _, cut) in zip(by_lease.values(), groups, strict=True):
            lease.amount -= cut
            lease.pending -= sum(q.item.charge_nanos for q in entries)
            lease.balance = entries[-1].item.balance_after_nanos  # the account's, after it
            if lease.count == 0 and lease.pending == 0:
                self._idle(lease)
        for entry in queued:
            item, hold = entry.item, entry.open.hold
            journal.settled(hold.id)
            self._answered.discard(hold.id)
            if entry.done is None:
                continue
            self._waiting -= 1
            if not entry.done.done():
                entry.done.set_result(
                    first_settlement(
                        hold,
                        "settled" if item.charge_nanos else "released",
                        item.charge_nanos,
                        item.estimated,
                        item.balance_after_nanos,
                        item.ledger_entry_id,
                    )
                )

    def _refused(self, entry: Queued) -> None:
        """A lone request whose hold row names a request id used before. A caller waiting for
        the commit is told (`RequestIdReused`); a request already answered keeps its charge and
        is written under a request id of its own (`{request id}#{hold id}`)."""
        admitted = entry.open.admitted
        if entry.done is None:
            log.warning("request id %r was used before; stored as its own", admitted.request_id)
            admitted.request_id = f"{admitted.request_id}#{admitted.hold_id}"[:200]
            self._queue.insert(0, entry)
            self._schedule(0.0)
            return
        entry.open.lease.pending -= entry.item.charge_nanos
        self._waiting -= 1
        if not entry.done.done():
            entry.done.set_exception(RequestIdReused(admitted.request_id))

    def _failed(
        self,
        queued: list[Queued],
        by_lease: dict[str, tuple[Lease, list[Queued]]],
        exc: BaseException,
    ) -> None:
        """Nothing of the batch was written. Callers waiting for it see the error (their
        requests stay in the journal, so a restart settles them at their recovery charge);
        requests already answered are queued again and retried, backing off."""
        log.error("writing a batch of %d settlements failed: %s", len(queued), exc)
        error = exc if isinstance(exc, Exception) else RuntimeError("settlement interrupted")
        for entry in queued:
            if entry.done is not None:
                entry.open.lease.pending -= entry.item.charge_nanos
                self._waiting -= 1
                if not entry.done.done():
                    entry.done.set_exception(error)
        again = [entry for entry in queued if entry.done is None]
        if again:
            self._queue[:0] = again
            self._retry_delay = min(max(2 * self._retry_delay, RETRY_FIRST), RETRY_MAX)
            self._schedule(self._retry_delay)
