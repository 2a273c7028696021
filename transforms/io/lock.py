"""One writer per output: a lease on ``<out>/_lock``, created only where none exists.

The lock file is created with the store's create-only write (``O_EXCL`` on a local disk, an
``ifGenerationMatch=0`` upload on Google Cloud Storage, ``If-None-Match: *`` on S3), so of two
jobs starting on the same output one gets it and the other is refused in one line. Its holder
renews the lease while it runs; a lock whose lease ran out, or whose process is gone from this
machine, was left by a job that died, and the next job takes it over.

Every commit runs under the lock (``transforms.outputs.commit.finalize``): a local run already
holds it (its run id: the commit re-enters it); a job on a cluster (Dataflow, Flink, Spark)
takes it for its commit, waiting while another job holds it, so two jobs' commits never
interleave.

The lease only says who is at work, to refuse a second job politely; it decides nothing about
the outputs. Whether a run may commit is its token's matter (``transforms.io.fence``): a
holder paused past its lease, or whose clock is wrong, is fenced out there by the job that
took the lock over. A renewal that fails (a fault of the store) is tried again; a holder that
could not renew within its lease says so (``lapsed``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec

from transforms.io.storage import atomic_output, create_only

LOCK = "_lock"
LEASE_S = 120.0  # a lock not renewed for this long was left by a job that died
LOG = logging.getLogger("pipeline")


class OutputBusy(RuntimeError):
    """Another job is writing the same output."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass
class OutputLock:
    """The lease of one job (``run_id``) on ``output``; a context manager. ``wait_s``: how
    long to wait for another job's lock before giving up. Taking a lock this run already
    holds re-enters it (released by its first holder only). ``lost`` turns true when another
    job took the lock over (this process stalled past its lease); ``lapsed`` when renewals
    failed for a whole lease."""

    output: str
    run_id: str
    lease_s: float = LEASE_S
    wait_s: float = 0.0
    lost: bool = False
    lapsed: bool = False
    _owned: bool = field(default=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def _where(self):
        fs, root = fsspec.core.url_to_fs(self.output)
        return fs, posixpath.join(root, LOCK)

    def _record(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires": time.time() + self.lease_s}).encode()

    def _held(self) -> dict:
        """The lock's record (``{}`` if it is gone, unreadable or not a lock's record: a write
        that did not end, or anything else left there, is no live job's)."""
        fs, path = self._where
        try:
            held = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return {}
        fields = {"run_id": str, "host": str, "pid": int, "expires": (int, float)}
        if not isinstance(held, dict) or not all(isinstance(held.get(k), t)
                                                 for k, t in fields.items()):
            return {}
        if not -1e12 < held["expires"] < 1e12:
            return {}
        return held

    def _stale(self, held: dict) -> bool:
        if not held or held.get("expires", 0) < time.time():
            return True
        return held.get("host") == socket.gethostname() and not _alive(int(held.get("pid", 0)))

    def _busy(self, held: dict) -> OutputBusy:
        expires = datetime.fromtimestamp(held["expires"], timezone.utc)
        return OutputBusy(
            f"{self.output} is being written by run {held.get('run_id')} (host "
            f"{held.get('host')}, pid {held.get('pid')}, lease until "
            f"{expires:%Y-%m-%d %H:%M:%S} UTC): wait for it to end, or remove {LOCK} there "
            "if that job is gone")

    def check_free(self) -> None:
        """Raise ``OutputBusy`` if another live job holds the lock (nothing is taken)."""
        held = self._held()
        if held and held.get("run_id") != self.run_id and not self._stale(held):
            raise self._busy(held)

    def acquire(self) -> None:
        """Take the lock (waiting up to ``wait_s`` for another job's), or raise ``OutputBusy``
        saying who holds it."""
        deadline, told = time.monotonic() + self.wait_s, False
        while True:
            try:
                return self._take()
            except OutputBusy as busy:
                if time.monotonic() >= deadline:
                    raise
                if not told:  # a wait is said once, naming who holds the lock
                    LOG.info("waiting (up to %.0f s) for the lock: %s", self.wait_s, busy)
                    told = True
                time.sleep(min(5.0, self.lease_s / 8))

    def _take(self) -> None:
        fs, path = self._where
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        for _ in range(3):
            try:
                with fs.open(path, "xb") as f:  # create-only
                    f.write(self._record())
            except FileExistsError:
                held = self._held()
                if not held:  # being created this instant (an exclusive create, then bytes)?
                    time.sleep(0.5)
                    held = self._held()
                if held.get("run_id") == self.run_id and not self._stale(held):
                    return  # this run holds it already (a local run's commit): re-entered
                if not self._stale(held):
                    raise self._busy(held) from None
                self._remove_if_unchanged(fs, path)  # left by a job that died: taken over
                continue
            if self._held().get("run_id") == self.run_id:  # no other taker came in between
                self._owned = True
                self._thread = threading.Thread(target=self._renew, daemon=True)
                self._thread.start()
                return
        raise OutputBusy(f"{self.output}: another job took the lock at the same moment")

    def _remove_if_unchanged(self, fs, path: str) -> None:
        """Remove a dead job's lock, unless another taker replaced it since it was read (the
        bytes are read again just before: the window two takers share is that short)."""
        try:
            before = fs.cat_file(path)
            time.sleep(0.05)
            if fs.cat_file(path) == before:
                fs.rm(path)
        except FileNotFoundError:
            pass

    def _renew(self) -> None:
        fs, path = self._where
        renewed, failing = time.monotonic(), False
        while not self._stop.wait(self.lease_s / (16 if failing else 4)):
            try:
                held = self._held()
                if not held:  # gone or being rewritten: read once more before judging
                    time.sleep(0.5)
                    held = self._held()
                if held and held.get("run_id") != self.run_id:  # stalled past its lease
                    self.lost = True
                    LOG.warning("output lock: run %s (host %s) took %s over; this run may not "
                                "commit there", held["run_id"], held["host"], self.output)
                    return
                if not held:  # removed as a dead job's: taken again only where still free
                    create_only(fs, path, self._record())
                else:
                    with atomic_output(fs, path) as f:  # readers never see it empty
                        f.write(self._record())
            except FileExistsError:
                continue  # another job created it this instant: read on the next round
            except Exception as e:  # noqa: BLE001 - a fault of the store: tried again
                failing = True
                if time.monotonic() - renewed > self.lease_s and not self.lapsed:
                    self.lapsed = True
                    LOG.warning("output lock: not renewed for a whole lease (%s); another job "
                                "may take %s over, and then this run may not commit",
                                type(e).__name__, self.output)
                else:
                    LOG.warning("output lock: renewal failed (%s); trying again",
                                type(e).__name__)
                continue
            renewed, failing, self.lapsed = time.monotonic(), False, False

    def release(self) -> None:
        """Give the lock back (if this holder took it and it is still this job's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._owned and self._held().get("run_id") == self.run_id:
            fs, path = self._where
            fs.rm(path)
        self._owned = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
