"""A progress line every 30 s per worker process: documents read and done, their rate, the
time elapsed (counts only, never text). A timer thread logs it, so a line comes even while a
long stage runs."""

from __future__ import annotations

import logging
import threading
import time

LOG = logging.getLogger("pipeline")
EVERY_S = 30.0


class Progress:
    """Counts of this process, logged by a daemon thread started on first use."""

    def __init__(self, every: float = EVERY_S) -> None:
        self.every = every
        self.read = self.done = 0
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread (once per process)."""
        with self._lock:
            if self._thread is None:
                self._t0 = time.monotonic()
                self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
                self._thread.start()

    def add(self, read: int = 0, done: int = 0) -> None:
        """Count documents read and documents done (written)."""
        with self._lock:
            self.read += read
            self.done += done

    def line(self) -> str:
        """The progress line as it stands."""
        elapsed = time.monotonic() - self._t0
        return (f"progress: {self.read:,} documents read, {self.done:,} done by this worker, "
                f"{self.done / max(elapsed, 1e-9):.1f}/s, {elapsed:.0f} s elapsed")

    def _loop(self) -> None:
        while True:
            time.sleep(self.every)
            LOG.info("%s", self.line())


PROGRESS = Progress()
