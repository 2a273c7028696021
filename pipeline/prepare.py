"""Prepare a machine for the job once: ``python -m pipeline.prepare --tasks FILE [options]``.

Loads every task's model as a worker of the job would, with the job's own options (hub models
downloaded, ``gs://`` ones copied into ``$CLINICAL_NER_CACHE``), and on a CPU converts each
encoder for the backend the job will use (OpenVINO int8 by default) into the same cache. The
job's first run on the machine then starts as fast as every later one: run it when a CPU server
is installed or its task file changes. It prints each task's model, how it runs and the seconds
it took.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from pipeline.options import AnnotateOptions, inference_config, parse_options, uses_gpu
from pipeline.tasks import TaskFileError, load_tasks, pin_revisions
from transforms.handlers import TokenClassifierHandler


def prepare(argv: Sequence[str]) -> list[tuple[str, str, float]]:
    """Load (and convert, on a CPU) every task's model; ``(task, how it runs, seconds)``."""
    options = parse_options(list(argv), "python -m pipeline.prepare", ("tasks",))
    opts = options.view_as(AnnotateOptions)
    opts.apply_device_defaults(uses_gpu(options, local=True))
    done = []
    for name, spec in pin_revisions(load_tasks(opts.tasks)).items():
        started = time.perf_counter()
        model = TokenClassifierHandler(spec, inference_config(opts)).load_model()
        done.append((name, model.runs_as, time.perf_counter() - started))
    return done


def main() -> None:
    """Console entry point."""
    from pipeline.logs import configure_logging

    configure_logging()
    try:
        for name, runs_as, seconds in prepare(sys.argv[1:]):
            print(f"task {name}: ready ({runs_as}, {seconds:.1f} s)")
    except TaskFileError as e:
        raise SystemExit(f"pipeline.prepare: {e}") from None


if __name__ == "__main__":
    main()
