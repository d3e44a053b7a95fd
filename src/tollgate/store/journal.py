"""The admission journal of a process that admits Unified Billing requests against a credit lease
(`tollgate.billing.leases`): what it forwarded that is not in the database yet.

A lease-admitted request has no hold row until it is settled: its admission is one line appended
here before the request is forwarded, and the settlement batch writes the hold row (already
resolved) with its ledger entry. So after a crash, the lines whose hold id is not in `holds` are
exactly the requests that were in flight, and recovery charges each its recovery estimate, as
the ledger's policy says for a forwarded hold (`tollgate.billing.ledger`).

- **Where:** a directory next to the SQLite database (`{database}.journal/`): one lock file per
  live process (`{owner}.lock`, held with `flock` for the process's life) and its journal
  segments (`{owner}.{n}.jsonl`). A lock that can be taken belongs to a dead process.
- **Durability:** `os.write` to a file opened with `O_APPEND`: a killed process loses nothing
  (the line is in the operating system's cache), as for SQLite's WAL at `synchronous=NORMAL`.
- **Size:** a segment is closed past `SEGMENT_BYTES`; a closed segment whose admissions are all
  settled is deleted. Under steady load the journal stays a few megabytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Admitted:
    """One journal line: a lease-admitted hold, as `holds` would store it."""

    hold_id: str
    account_id: str
    request_id: str
    gateway_id: str | None
    model: str | None
    amount_nanos: int
    recovery_charge_nanos: int
    created_at: str  # stored form (`holds_sqlite.stamp`)
    expires_at: str

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
                    self.created_at,
                    self.expires_at,
                ]
            )
            + b"\n"
        )

    @classmethod
    def parse(cls, line: bytes) -> Admitted:
        fields = orjson.loads(line)
        return cls(*fields)


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
        self._fd = -1
        self._size = 0
        self._pending: dict[int, int] = {}  # segment number -> admissions not yet settled
        self._segment_of: dict[str, int] = {}  # hold id -> its segment
        self._open_segment()

    def _path(self, number: int) -> Path:
        return self.directory / f"{self.owner}.{number}.jsonl"

    def _open_segment(self) -> None:
        self._number += 1
        flags = os.O_CREAT | os.O_WRONLY | os.O_APPEND
        self._fd = os.open(self._path(self._number), flags, 0o600)
        self._size = 0
        self._pending[self._number] = 0

    def append(self, admitted: Admitted) -> None:
        """Record an admission before its request is forwarded."""
        line = admitted.line()
        os.write(self._fd, line)
        self._size += len(line)
        self._pending[self._number] += 1
        self._segment_of[admitted.hold_id] = self._number
        if self._size >= SEGMENT_BYTES:
            os.close(self._fd)
            self._open_segment()

    def settled(self, hold_id: str) -> None:
        """Its hold row is committed: the line is no longer needed for recovery."""
        number = self._segment_of.pop(hold_id, None)
        if number is None:
            return
        self._pending[number] -= 1
        if self._pending[number] == 0 and number != self._number:
            del self._pending[number]
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()

    def close(self, *, remove: bool) -> None:
        """Close the files; `remove` (nothing in flight, everything settled) deletes them too."""
        os.close(self._fd)
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
            admitted = [
                Admitted.parse(line)
                for path in segments
                for line in path.read_bytes().splitlines()
                if line.strip()
            ]
            yield DeadJournal(owner, admitted, [*segments, lock])
        finally:
            os.close(fd)
