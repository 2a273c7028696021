"""The progress line: counts and rates of this worker, never text."""

import logging
import time

from transforms.progress import Progress


def test_a_line_comes_from_the_timer_with_counts(caplog):
    progress = Progress(every=0.05)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        progress.start()
        progress.add(read=3)
        progress.add(done=2)
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines, "the timer logs without any document passing"
    assert lines[-1].startswith("progress: 3 documents read, 2 done by this worker, ")
    assert lines[-1].endswith(" s elapsed")
