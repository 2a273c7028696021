"""The progress line: counts and rates of this worker, never text."""

import logging
import time

from transforms.io.progress import Progress


def test_a_line_comes_from_the_timer_with_counts(caplog):
    progress = Progress(every=0.05, first=0.05)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        progress.start()
        progress.add(read=3)
        progress.add(done=2)
        time.sleep(0.3)
    mine = "progress: 3 documents read, 2 done by this worker, "  # (another test's timer may
    lines = [r.getMessage() for r in caplog.records  # log here too: its counts differ)
             if r.getMessage().startswith(mine)]
    assert lines, "the timer logs without any document passing"
    assert lines[-1].endswith(" s elapsed")


def test_the_rate_is_that_of_the_last_interval_beside_the_average():
    clock = iter([10.0, 20.0])
    progress = Progress(clock=lambda: next(clock))
    progress._t0, progress._last = 0.0, (0.0, 0)
    progress.add(done=100)
    assert "100 done by this worker, 10.0/s now (10.0/s since the start), 10 s" in \
        progress.line()
    progress.add(done=10)  # slowing down: the line says so, the average hides it
    assert "110 done by this worker, 1.0/s now (5.5/s since the start), 20 s" in progress.line()
