"""The admission journal of a process that admits Unified Billing requests against a credit lease
(`tollgate.billing.leases`): what it forwarded that is not in the database yet.

A lease-admitted request reaches the database only when it is over: its settlement batch writes
its `usage` ledger entry (reference `lease:{hold id}`), or, for a release, a hold row in state
`released`. Its admission is one line in this journal, written before the request is forwarded.
A request answered before its batch is committed (the data plane's) also gets a **resolution**
line, written before the answer: the exact charge, its flag, note and ledger entry id. So after
a crash, the lines whose hold id has neither an entry nor a hold row are exactly the requests
not yet in the books: one with a resolution line is written as it was answered, and one without
(it was in flight) is charged its recovery estimate, as the ledger's policy says for a forwarded
hold (`tollgate.billing.ledger`).

- **Where:** a directory next to the SQLite database (`{database}.journal/`): one lock file per
  live process (`{owner}.lock`, held with `flock` for the process's life) and its journal
  segments (`{owner}.{n}.jsonl`). A lock that can be taken belongs to a dead process.
- **Writing:** a segment is a file of `SEGMENT_BYTES` mapped into memory (`mmap`, shared), and a
  line is copied into it: no system call per admission. A killed process loses nothing (the
  bytes are in the operating system's page cache, as SQLite's WAL commits are at
  `synchronous=NORMAL`). A process killed in the middle of copying a line leaves it cut short;
  that request was not forwarded yet, and the reader skips the line.
- **Size:** a full segment is closed and the next one mapped; a closed segment whose admissions
  are all settled is deleted. Under steady load the journal stays a few megabytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class Admitted:
    """One journal line: a lease-admitted hold. (Not frozen: built once per request, and a frozen
    dataclass's constructor costs several times more.)"""

    hold_id: str
    account_id: str
    request_id: str
    gateway_id: str | None
    model: str | None
    amount_nanos: int
    recovery_charge_nanos: int
    created_us: int  # admitted at, in microseconds since the Unix epoch (UTC)

    def line(self) -> bytes:
        return (
            orjson.dumps(
                [
                    self.hold_id,
                    self.account_id,
                    self.request_id,
                    self.gateway_id,
                    self.model,
                    self.amount_nanos,
                    self.recovery_charge_nanos,
                    self.created_us,
                ]
            )
            + b"\n"
        )

    @classmethod
    def parse(cls, line: bytes) -> Admitted | None:
        """The admission on `line`, or None for a line cut short by a crash (never forwarded)."""
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if len(fields) == 9:  # written by tollgate 0.1: stored-form timestamps, with expiry
            created = datetime.fromisoformat(fields[7]).replace(tzinfo=UTC)
            fields = [*fields[:7], int(created.timestamp() * 1_000_000)]
        return cls(*fields)


RESOLUTION_MARK = "r"  # the first field of a resolution line (an admission's is a hold id)


@dataclass(frozen=True, slots=True)
class Resolution:
    """One journal line: how a request answered before its commit was resolved."""

    hold_id: str
    charge_nanos: int  # 0: released
    estimated: bool
    note: str
    ledger_entry_id: str | None  # the id its usage entry gets (None when nothing is charged)

    def line(self) -> bytes:
        fields = [RESOLUTION_MARK, self.hold_id, self.charge_nanos, self.estimated, self.note]
        return orjson.dumps([*fields, self.ledger_entry_id]) + b"\n"


@dataclass(slots=True)
class Lines:
    """What a journal holds: its admissions, and the resolutions by hold id."""

    admitted: list[Admitted] = field(default_factory=list)
    resolutions: dict[str, Resolution] = field(default_factory=dict)


def read_lines(path: Path) -> list[Admitted]:
    """Every complete admission in a segment (the unused, zeroed tail is not a line)."""
    return read_segment(path).admitted


def read_segment(path: Path, into: Lines | None = None) -> Lines:
    """Every complete line of a segment, added to `into` (or a new `Lines`). A line cut short by
    a crash is skipped: an admission not forwarded yet, or a resolution not answered yet."""
    found = into if into is not None else Lines()
    for line in path.read_bytes().rstrip(b"\0").splitlines():
        if not line.strip(b"\0 \t"):
            continue
        if line.startswith(b'["r",'):
            try:
                resolution = Resolution(*orjson.loads(line)[1:])
            except (orjson.JSONDecodeError, TypeError):
                continue
            found.resolutions[resolution.hold_id] = resolution
            continue
        admitted = Admitted.parse(line)
        if admitted is not None:
            found.admitted.append(admitted)
    return found


def journal_dir(database_path: str) -> Path:
    return Path(f"{database_path}.journal")


class Journal:
    """This process's journal: append admissions, learn when they are settled."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / f"{owner}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._number = 0
        self._map: mmap.mmap
        self._size = 0
        self._pending: dict[int, int] = {}  # segment number -> lines not yet settled
        self._segment_of: dict[str, int] = {}  # hold id -> its admission's segment
        self._resolution_of: dict[str, int] = {}  # hold id -> its resolution's segment
        self._open_segment()

    def _path(self, number: int) -> Path:
        return self.directory / f"{self.owner}.{number}.jsonl"

    def _open_segment(self) -> None:
        self._number += 1
        fd = os.open(self._path(self._number), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            # Blocks reserved now: a full disk is an OSError here (the admission is refused), never
            # a SIGBUS later when a line is copied into a page that has no block.
            os.posix_fallocate(fd, 0, SEGMENT_BYTES)
            self._map = mmap.mmap(fd, SEGMENT_BYTES)  # shared: writes go to the page cache
        finally:
            os.close(fd)
        self._size = 0
        self._pending[self._number] = 0

    def append(self, admitted: Admitted) -> None:
        """Record an admission before its request is forwarded."""
        self._segment_of[admitted.hold_id] = self._write(admitted.line())

    def resolved(self, resolution: Resolution) -> None:
        """Record how a request was resolved, before it is answered ahead of its commit."""
        self._resolution_of[resolution.hold_id] = self._write(resolution.line())

    def _write(self, line: bytes) -> int:
        end = self._size + len(line)
        if end > SEGMENT_BYTES:
            self._map.close()
            full = self._number
            self._open_segment()
            self._drop_if_done(full)
            end = len(line)
        self._map[self._size : end] = line
        self._size = end
        self._pending[self._number] += 1
        return self._number

    def settled(self, hold_id: str) -> None:
        """Its settlement is committed: its lines are no longer needed for recovery."""
        for lines_of in (self._segment_of, self._resolution_of):
            number = lines_of.pop(hold_id, None)
            if number is not None:
                self._pending[number] -= 1
                self._drop_if_done(number)

    def _drop_if_done(self, number: int) -> None:
        """Delete a full segment once every line in it is settled."""
        if self._pending.get(number) == 0 and number != self._number:
            del self._pending[number]
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()

    def close(self, *, remove: bool) -> None:
        """Close the files; `remove` (nothing in flight, everything settled) deletes them too."""
        self._map.close()
        if remove:
            for number in list(self._pending):
                with contextlib.suppress(FileNotFoundError):
                    self._path(number).unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{self.owner}.lock").unlink()
        os.close(self._lock_fd)


@dataclass(frozen=True, slots=True)
class DeadJournal:
    """A journal whose process is gone: its admissions, and how to remove it once resolved."""

    owner: str
    admitted: list[Admitted]
    files: list[Path]
    resolutions: dict[str, Resolution] = field(default_factory=dict)

    def remove(self) -> None:
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def dead_journals(directory: Path, *, live_owner: str | None = None) -> Iterator[DeadJournal]:
    """Every journal in `directory` whose owner's lock can be taken (the owner is dead)."""
    if not directory.is_dir():
        return
    for lock in sorted(directory.glob("*.lock")):
        owner = lock.name.removesuffix(".lock")
        if owner == live_owner:
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            segments = sorted(directory.glob(f"{owner}.*.jsonl"))
            lines = Lines()
            for path in segments:
                read_segment(path, lines)
            yield DeadJournal(owner, lines.admitted, [*segments, lock], lines.resolutions)
        finally:
            os.close(fd)
