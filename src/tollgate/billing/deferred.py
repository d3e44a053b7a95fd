"""Settlements the database could not take when their request ended, written once it is back.

A request's hold is written before it is forwarded, so a database outage refuses new requests
(fail closed). A request already forwarded when the database went away still ends: its answer
has been produced and relayed, and the meter knows exactly what it used. Leaving its hold open
would hand it to crash recovery, which charges the prompt estimate (`billing/ledger.py`) and so
loses the output's cost. Instead `Meter.settle` hands the result here:

- the request is answered as usual, without `cf-aig-cost` / `cf-aig-credits-remaining` (the
  balance after is not known yet); its log records the charge that is due;
- a background task retries the settlements, oldest first, backing off from 0.25 s to 5 s while
  the database stays unreachable; each is the same `Ledger.settle` (or `release`), which is
  idempotent: a commit whose answer was lost with the connection returns its first result;
- the holds waiting here are kept alive like requests in flight (`Meter.keep_alive`), so another
  process's maintenance does not recover them meanwhile;
- at shutdown they get one more try (`drain`); what is still waiting is left open and resolved
  by crash recovery's policy, as if the process had died.

The same queue undoes an admission whose outcome is unknown: a hold written while the
connection broke (its commit landed, its answer was lost) would otherwise be recovered as
forwarded and charged its prompt estimate, though its request was refused with a 503 and never
sent. `release_if_held` releases such a hold, if it exists, once the database is back.

Only "cannot reach the database" is deferred (`tollgate.store.engine.unreachable`); any other
error is a bug and is raised as before. Credit leases (SQLite) journal their settlements and
retry their own batches, so they never get here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tollgate.billing.ledger import Ledger
from tollgate.store import holds as holds_repo
from tollgate.store.engine import unreachable
from tollgate.store.holds import Hold, Settlement
from tollgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.25
LAST_RETRY_SECONDS = 5.0
DRAIN_AT_SHUTDOWN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Due:
    """A settlement waiting for the database: `charge_nanos` None is a release."""

    hold: Hold
    charge_nanos: int | None
    estimated: bool
    note: str


class DeferredSettlements:
    def __init__(self, ledger: Ledger, on_settled: Callable[[Settlement], None]) -> None:
        self.ledger = ledger
        self.on_settled = on_settled  # told each settlement once it is written
        self._due: dict[str, Due] = {}  # by hold id, oldest first
        self._refused: dict[str, None] = {}  # request ids whose admission failed, oldest first
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._due) + len(self._refused)

    def holds(self) -> list[Hold]:
        return [due.hold for due in self._due.values()]

    def _retry_soon(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry())

    def release_if_held(self, request_id: str) -> None:
        """Queue the release of the hold of a request refused for an unreachable database, in
        case its write committed after all."""
        self._refused[request_id] = None
        self._retry_soon()

    def defer(self, due: Due) -> Settlement:
        """Queue `due`; returns the result the request reports meanwhile (no balance)."""
        self._due[due.hold.id] = due
        self._retry_soon()
        log.warning(
            "database unreachable: the settlement of hold %s is deferred (%d waiting)",
            due.hold.id,
            len(self._due),
        )
        charge = due.charge_nanos or 0
        return Settlement(
            hold_id=due.hold.id,
            account_id=due.hold.account_id,
            state="released" if due.charge_nanos is None else "settled",
            charged_nanos=charge,
            held_nanos=due.hold.amount_nanos,
            overshoot_nanos=max(0, charge - due.hold.amount_nanos),
            estimated=due.estimated,
            balance_after_nanos=None,
            ledger_entry_id=None,
            replayed=False,
        )

    async def write_due(self) -> bool:
        """Try every waiting settlement, oldest first; stop at the first the database cannot
        take. True when none is left."""
        for request_id in list(self._refused):
            try:
                hold = await holds_repo.get_hold_by_request(self.ledger.store, request_id)
                if hold is not None and hold.state == "open":
                    await self.ledger.release(hold)
                    log.warning("released hold %s of a request refused in an outage", hold.id)
            except Exception as exc:
                if unreachable(exc):
                    return False
                log.exception("undoing the admission of request %s failed", request_id)
            del self._refused[request_id]
        for hold_id, due in list(self._due.items()):
            try:
                if due.charge_nanos is None:
                    settlement = await self.ledger.release(due.hold)
                else:
                    settlement = await self.ledger.settle(
                        due.hold, due.charge_nanos, estimated=due.estimated, note=due.note
                    )
            except Exception as exc:
                if unreachable(exc):
                    return False
                # Not the outage: a bug. Crash recovery's policy resolves the hold instead.
                log.exception("a deferred settlement failed; hold %s is left open", hold_id)
                del self._due[hold_id]
                continue
            del self._due[hold_id]
            self.on_settled(settlement)
        return True

    async def _retry(self) -> None:
        wait = FIRST_RETRY_SECONDS
        while self:
            await asyncio.sleep(wait)
            if await self.write_due():
                log.warning("the database is back: every deferred settlement is written")
                return
            wait = min(wait * 2, LAST_RETRY_SECONDS)

    async def drain(self) -> int:
        """At shutdown: a last try (up to `DRAIN_AT_SHUTDOWN_SECONDS`), then stop retrying.
        Returns how many are left open for crash recovery."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_AT_SHUTDOWN_SECONDS):
                    await self.write_due()
        if self:
            log.error(
                "%d settlements could not be written before shutdown (database unreachable); "
                "crash recovery will resolve their holds at their estimates",
                len(self),
            )
        return len(self)
