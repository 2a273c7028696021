"""Turns on a machine's GPU: its worker processes use it one group at a time.

Each worker process holds its own copy of the models and hands the GPU a group's batches in
one call per task. Left to the GPU's scheduler (time slices, or MPS), the calls of several
processes run interleaved and all finish late together, so that their processes then do their
host work together while the GPU waits. Taking turns, the first group ready runs alone, all
its tasks back to back, and its process goes back to its host work (its results' decoding, its
next group) while the next group runs: the host work of one process overlaps the GPU's work
for another (``python -m bench.feed`` measures it). A thread takes the turn for its group's
first call and gives it back after the last task's call returns (or on a failure); the turn is
an exclusive lock on a file of the machine's temporary folder (processes that do not share
one, such as separate containers, take no turns among them).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading

LOG = logging.getLogger("pipeline")
_held = threading.local()  # the lock file through which this thread holds the turn


def turn_file(device: int = 0) -> str:
    """The lock file of GPU ``device`` on this machine."""
    return os.path.join(tempfile.gettempdir(), f"clinical-ner-gpu{device}.lock")


def take_turn(path: str | None = None) -> None:
    """Wait for the GPU's turn and hold it in this thread (kept where held already); where the
    lock file cannot be opened (another user's, a read-only folder), go on without one."""
    if getattr(_held, "lock", None) is not None:
        return
    try:
        lock = open(path or turn_file(), "a+b")
    except OSError as e:
        LOG.debug("GPU turns: %s; running without", e)
        return
    fcntl.flock(lock, fcntl.LOCK_EX)
    _held.lock = lock


def give_turn() -> None:
    """Give back the turn this thread holds, if any."""
    lock, _held.lock = getattr(_held, "lock", None), None
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
