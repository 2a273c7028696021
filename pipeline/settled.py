"""Read an output's committed rows only, even while a job commits there.

A commit that replaces rows (a redo) removes them, then moves the new parts into place: for
those seconds, or until the next run where a job was killed in between, a reader of
``out/spans/`` may miss rows (never see one twice). ``read(out, fn)`` runs ``fn`` (any reader:
pandas, pyarrow, DuckDB) between two checks of the output's commit state and returns its
result once both agree and no commit was in progress::

    from pipeline.settled import read
    spans = read("gs://bucket/out", lambda: pd.read_parquet("gs://bucket/out/spans"))

``python -m pipeline.settled OUT [--wait S]`` prints the state as JSON and exits 0 when no
commit is in progress (waiting up to S seconds for one to end), 3 otherwise: a scheduler's
sensor before loading the outputs into a warehouse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, TypeVar

from transforms.outputs.commit import commit_state

T = TypeVar("T")
POLL_S = 2.0


class NotSettled(TimeoutError):
    """A commit stayed in progress for longer than the reader would wait."""


def wait(out: str, wait_s: float = 0.0) -> tuple[int, tuple[str, ...]]:
    """The commit state of ``out`` once no commit is in progress; ``NotSettled`` after
    ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        state = commit_state(out)
        if not state[1]:
            return state
        if time.monotonic() >= deadline:
            raise NotSettled(f"{out}: run(s) {', '.join(state[1])} committing; rerun the same "
                             "command if its job is gone")
        time.sleep(POLL_S)


def read(out: str, fn: Callable[[], T], wait_s: float = 3600.0) -> T:
    """``fn()`` as of a state of ``out`` with no commit in progress, read again where a commit
    came meanwhile."""
    deadline = time.monotonic() + wait_s
    while True:
        before = wait(out, max(0.0, deadline - time.monotonic()))
        result = fn()
        if commit_state(out) == before:
            return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.settled",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="the job's --output")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a commit")
    args = ap.parse_args(argv)
    try:
        last, _ = wait(args.output, args.wait)
    except NotSettled as e:
        print(json.dumps({"settled": False, "committing": list(commit_state(args.output)[1])}))
        print(f"pipeline.settled: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    print(json.dumps({"settled": True, "log_entry": last}))


if __name__ == "__main__":
    main()
