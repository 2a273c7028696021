"""Turns on a machine's GPU: its worker processes hand it their batches one call at a time.

Each worker process holds its own copy of the models and hands the GPU a group's batches in
one call per task. Left to the GPU's scheduler (time slices, or MPS), the calls of several
processes run interleaved and all finish late together, so that their processes then do their
host work together while the GPU waits. Taking turns, the first call ready runs alone, and its
process goes back to its host work (settling the results, its next group) while the next call
runs: the host work of one process overlaps the GPU's work for another (``python -m
bench.feed`` measures it), and each process has at most one batch's activations on the GPU.
The turn is an exclusive lock on a file of the machine's temporary folder, one file per GPU,
held only while a call runs (processes that do not share the folder, such as separate
containers, take no turns among them; the threads of one process still do).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

LOG = logging.getLogger("pipeline")


def visible_gpu() -> str:
    """The GPU this process uses: the first of ``CUDA_VISIBLE_DEVICES`` (an index or a UUID),
    else 0."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"


def turn_file() -> str:
    """The lock file of the GPU this process uses (``visible_gpu``)."""
    name = "".join(c if c.isalnum() or c == "-" else "_" for c in visible_gpu())
    return os.path.join(tempfile.gettempdir(), f"clinical-ner-gpu-{name}.lock")


@contextmanager
def gpu_turn(path: str | None = None) -> Iterator[None]:
    """Hold the GPU's turn (``path``: its lock file) for the block; where the file cannot be
    opened, the block runs without a turn."""
    try:  # readable by every user (a lock needs no write access), whoever made it
        fd = os.open(path or turn_file(), os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as e:
        LOG.debug("GPU turns: %s; running without", e)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing gives the lock back
