"""Start-up recovery of the credit leases of processes that died (`tollgate.billing.leases`).

Each dead process's journal (`tollgate.store.journal`) is read. Its admissions with neither a
`lease:` entry nor a hold row are not in the books: one with a resolution line was answered with
that charge before its batch was committed, and is written exactly so; one without was in flight
and is settled at its recovery charge, flagged estimated (the ledger's policy for a forwarded
hold). Then the dead process's leases are given back, and its journal removed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from tollgate.store import leases_sqlite
from tollgate.store.engine import Store
from tollgate.store.holds_sqlite import stamp
from tollgate.store.journal import dead_journals

log = logging.getLogger(__name__)


async def recover_dead(
    store: Store, directory: Path, live_owner: str, note: str
) -> tuple[int, int]:
    """Resolve every dead journal in `directory` (all but `live_owner`'s); returns (requests
    written, nanos charged)."""
    written = charged = answered = 0
    started = time.monotonic()
    for dead in list(dead_journals(directory, live_owner=live_owner)):
        now = stamp(datetime.now(UTC))
        count, nanos = await store.hot().run(
            partial(
                leases_sqlite.recover_owner,
                owner=dead.owner,
                admitted=dead.admitted,
                note=note,
                now=now,
                resolutions=dead.resolutions,
            )
        )
        dead.remove()
        written, charged = written + count, charged + nanos
        answered += len(dead.resolutions)
    # Leases of owners that left no lock at all (no journal to read): nothing was admitted
    # against them after the lock went, so they are given back whole.
    for owner in await store.hot().run(leases_sqlite.lease_owners):
        if owner != live_owner and not (directory / f"{owner}.lock").exists():
            now = stamp(datetime.now(UTC))
            await store.hot().run(
                partial(leases_sqlite.recover_owner, owner=owner, admitted=[], note=note, now=now)
            )
    if written:
        log.warning(
            "recovered %d lease-admitted requests a crashed process left out of the books "
            "(charged %d nanos; the journal held the answered charge of up to %d of them, the "
            "rest were in flight and charged their estimates) in %.2f s",
            written,
            charged,
            answered,
            time.monotonic() - started,
        )
    return written, charged
