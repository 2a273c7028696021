"""Who may commit to an output: a log of numbered entries, ``<out>/_log/<seq>.json``, each
created only where none exists.

A job becomes the output's owner by creating the next entry (``own``); its entry's number is
its token. It commits by creating the next entry (``commit``) after checking that no other job
took the output since its token. Entries are created with the store's create-only write
(``storage.create_only``), so where a newer owner and a stale job race for the same number the
store decides: the stale job's commit fails, reads the log again, finds the newer owner and
stops (``Fenced``). A job paused past its lease, one whose clock is wrong, one that lost its
lease or never had one (a cluster job takes its token at launch) cannot commit once a newer
job owns the output, and nothing here reads a clock.

The log is kept short: once a commit is complete its owner removes the entries before its
token (the commits among them are recorded under ``_runs/`` first).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
from dataclasses import dataclass, field
from typing import Callable, Mapping

from transforms.io.storage import create_only

FOLDER = "_log"
OWN, COMMIT = "own", "commit"
ATTEMPTS = 100  # entries created by others while this one tries: more means a storm of jobs


class Fenced(RuntimeError):
    """Another job took the output over after this run's token: this run may not commit."""


@dataclass(frozen=True)
class Entry:
    """One entry of the log: ``kind`` (own, commit; ``?`` for bytes that are no entry, taken
    as a newer owner's), the ``run`` that wrote it and what it recorded."""

    seq: int
    kind: str
    run: str
    record: Mapping = field(default_factory=dict)

    def says(self) -> str:
        """Who took the output, for a message (no text of any document)."""
        r = self.record
        where = f" (host {r.get('host')}, pid {r.get('pid')})" if "host" in r else ""
        return f"run {self.run}{where} took the output over (log entry {self.seq})"


def _path(root: str, seq: int) -> str:
    return posixpath.join(root, FOLDER, f"{seq:020d}.json")


def numbers(fs, root: str) -> list[int]:
    """The numbers of the log's entries, in order (one listing, nothing read)."""
    try:
        names = fs.ls(posixpath.join(root, FOLDER), detail=False)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem, dot, suffix = posixpath.basename(name).partition(".")
        if dot and suffix == "json" and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def entries(fs, root: str, after: int = 0) -> list[Entry]:
    """The log's entries numbered above ``after``, in order."""
    wanted = [n for n in numbers(fs, root) if n > after]
    if not wanted:
        return []
    data = fs.cat([_path(root, n) for n in wanted], on_error="omit")
    found = []
    for n in wanted:
        raw = data.get(_path(root, n))
        if raw is None:  # removed since the listing (pruned: older than a newer owner's token)
            continue
        try:
            record = json.loads(raw)
            found.append(Entry(n, str(record["kind"]), str(record["run"]),
                               record.get("record", {})))
        except (ValueError, KeyError, TypeError):
            found.append(Entry(n, "?", "?"))
    return found


def _append(fs, root: str, kind: str, run: str, before: Callable[[], Mapping]) -> int:
    """Create the next entry (``before()`` first, each try: it may raise, or give the record);
    its number."""
    for _ in range(ATTEMPTS):
        last = max(numbers(fs, root), default=0)
        record = before()
        try:
            create_only(fs, _path(root, last + 1),
                        json.dumps({"kind": kind, "run": run, "record": record}).encode())
            return last + 1
        except FileExistsError:
            continue  # another entry took that number: read the log again
    raise RuntimeError(f"{root}: {ATTEMPTS} tries to add to {FOLDER}/ all met a newer entry")


def take(fs, root: str, run: str, info: Callable[[], Mapping]) -> int:
    """Make ``run`` the output's owner; its token. ``info()``: what its entry records, read
    again on each try (as of the log it will follow)."""
    return _append(fs, root, OWN, run,
                   lambda: {"host": socket.gethostname(), "pid": os.getpid(), **info()})


def newer_owner(fs, root: str, run: str, token: int) -> Entry | None:
    """The first entry after ``token`` by which another job took the output, if any (an
    entry that cannot be read counts as one). Where ``token``'s own entry is gone (only a
    newer owner removes it), the first owner's entry still in the log."""
    gone = token not in numbers(fs, root)
    for entry in entries(fs, root, 0 if gone else token):
        if entry.run != run and entry.kind != COMMIT:
            return entry
    return Entry(token, "?", "?") if gone else None


def check_owner(fs, root: str, run: str, token: int) -> None:
    """Raise ``Fenced`` where another job took the output after ``token``."""
    newer = newer_owner(fs, root, run, token)
    if newer is not None:
        raise Fenced(f"{newer.says() if newer.run != '?' else 'another job took the output over'}"
                     f" after run {run} began: it may not commit there")


class _Recorded(Exception):
    """The run's commit is in the log already (another try of the same step wrote it)."""


def commit(fs, root: str, run: str, token: int, record: Mapping) -> int:
    """Record ``run``'s commit as the next entry, where it still owns the output (once: a
    second try finds the first's entry); its number. Raises ``Fenced`` where it does not own
    the output."""
    found: list[int] = []

    def owner_check() -> Mapping:
        check_owner(fs, root, run, token)
        found.extend(e.seq for e in entries(fs, root, token) if e.kind == COMMIT and e.run == run)
        if found:
            raise _Recorded
        return record

    try:
        return _append(fs, root, COMMIT, run, owner_check)
    except _Recorded:
        return found[0]


def prune(fs, root: str, below: int) -> None:
    """Remove the entries numbered below ``below`` (the caller recorded their commits)."""
    for n in numbers(fs, root):
        if n < below:
            fs.rm(_path(root, n))
