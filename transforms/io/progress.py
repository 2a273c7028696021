"""A progress line per worker process, 5 s after it starts and then every 30 s: documents read
and done, the rate since the last line and since the start, the time elapsed (counts only,
never text). A timer thread logs it, so a line comes even while a long stage runs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

LOG = logging.getLogger("pipeline")
EVERY_S, FIRST_S = 30.0, 5.0  # a short run still shows one line


class Progress:
    """Counts of this process, logged by a daemon thread started on first use."""

    def __init__(self, every: float = EVERY_S, first: float = FIRST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.first, self.clock = every, first, clock
        self.read = self.done = 0
        self._t0 = 0.0
        self._last = (0.0, 0)  # time and documents done at the last line
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread (once per process)."""
        with self._lock:
            if self._thread is None:
                self._t0 = self.clock()
                self._last = (self._t0, 0)
                self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
                self._thread.start()

    def add(self, read: int = 0, done: int = 0) -> None:
        """Count documents read and documents done (written)."""
        with self._lock:
            self.read += read
            self.done += done

    def line(self) -> str:
        """The progress line as it stands (and the start of the next line's interval)."""
        now = self.clock()
        elapsed, (since, done_then) = now - self._t0, self._last
        self._last = (now, self.done)
        return (f"progress: {self.read:,} documents read, {self.done:,} done by this worker, "
                f"{(self.done - done_then) / max(now - since, 1e-9):.1f}/s now "
                f"({self.done / max(elapsed, 1e-9):.1f}/s since the start), "
                f"{elapsed:.0f} s elapsed")

    def _loop(self) -> None:
        time.sleep(self.first)
        while True:
            LOG.info("%s", self.line())
            time.sleep(self.every)


PROGRESS = Progress()
