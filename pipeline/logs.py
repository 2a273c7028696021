"""The run's log: our lines, Beam's warnings, no progress bars, no document text.

``CLINICAL_NER_LOG_LEVEL`` sets the level (``DEBUG`` turns on Beam's own debug logging;
document text stays out of the logs at every level: the records' reprs hide it).
"""

from __future__ import annotations

import errno
import logging
import os
import re

LOG = logging.getLogger("pipeline")
_WRAPPED = re.compile(r"(?:^|\n)(?:\w+\.)*(\w+(?:Error|Exception|Fault|Missing)|Fenced): ")


def configure_logging() -> None:
    """Log lines with time, level and logger; no progress bars in them (worker processes
    inherit the environment)."""
    level = os.environ.get("CLINICAL_NER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Worker processes of a local multi-process run log through the runner: show our own
    # lines (progress, model loaded) and real warnings, as plain lines.
    workers = logging.getLogger("apache_beam.runners.portability.local_job_service")
    workers.setLevel(min(logging.getLevelName(level), logging.INFO)
                     if isinstance(logging.getLevelName(level), int) else logging.INFO)
    workers.addFilter(WorkerLines(level == "DEBUG"))
    # read by transformers when it is imported (not here: a run from a cached conversion
    # never imports it)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class WorkerLines(logging.Filter):
    """Rewrites the runner's ``Worker: severity: ... message: "..."`` records as the worker's
    own line; keeps warnings and errors, and the INFO lines of this pipeline's modules."""

    _ENTRY = re.compile(r'severity: (\w+).*?message: "(.*?)" (?:trace|log_location|instruction_id'
                        r'|thread|transform_id)', re.S)
    _LOCATION = re.compile(r'log_location: "([^"]*)"')
    # Beam's own notice in every local worker: harmless here (no registered user types)
    _NOISE = ("No semi_persistent_directory found",)

    def __init__(self, everything: bool = False) -> None:
        super().__init__()
        self._everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Worker: "):
            return True
        m = self._ENTRY.search(text)
        if not m:
            return self._everything
        severity, message = m.groups()
        location = self._LOCATION.search(text)
        ours = bool(location) and ("/transforms/" in location.group(1)
                                   or "/pipeline/" in location.group(1))
        if any(n in message for n in self._NOISE):
            return self._everything
        if severity in ("INFO", "DEBUG", "TRACE") and not (ours or self._everything):
            return False
        record.msg, record.args = "worker: %s", (message.encode().decode("unicode_escape"),)
        record.levelname = {"WARN": "WARNING"}.get(severity, severity)
        record.name = "pipeline" if ours else record.name
        return True


_NOT_COMMITTED = ("Nothing of this run was committed: run the same command again to resume "
                  "(shards already complete are skipped).")
_COMMITTED = ("This run's commit was recorded before it stopped: run the same command again; it "
              "finishes that commit first, then does what is left.")
# Where running again alone cannot help: what to do first.
_ADVICE = {
    "ModelFault": "the model fails on every window of several documents: check the task's "
                  "model in the task file; running again as it is will not help",
    "OutOfMemoryError": "out of memory on a single window: lower --max_tokens, or give the "
                        "job a machine with more memory, then run the same command again",
}
_FENCED = ("pipeline.run: the job stopped: another job took this output over while it ran (a "
           "newer token in {out}/_log/), so this run may not commit there and nothing of it "
           "was; that job's outputs stand. Two jobs should not share an --output: check which "
           "one was meant to write there.")


def stopped_message(e: BaseException, committed: bool = False, output: str = "the output") -> str:
    """One line for a job that stopped (a fault of the machine, storage or model; an
    interruption; another job that took the output over): what happened and what to do, and
    whether this run's commit was recorded (``committed``); never the exception's message (it
    may quote text)."""
    name = type(e).__name__
    found = _WRAPPED.findall(str(e))  # Beam re-raises a worker's error as "Name: message"
    if found:
        name = found[-1]
    if name == "Fenced":
        return _FENCED.format(out=output.rstrip("/"))
    if isinstance(e, KeyboardInterrupt) or name == "KeyboardInterrupt":
        return f"pipeline.run: the job was interrupted. {_COMMITTED if committed else _NOT_COMMITTED}"
    if getattr(e, "errno", None) == errno.ENOSPC or f"[Errno {errno.ENOSPC}]" in str(e):
        what = ("a disk is full (no space left on the device): free space where the output, "
                "its temporary folder or $CLINICAL_NER_CACHE live, then run the same command "
                "again")
    else:
        what = _ADVICE.get(name, "a fault of the machine, the storage or the model, not of a "
                                 "document; CLINICAL_NER_LOG_LEVEL=DEBUG shows where")
    return (f"pipeline.run: the job stopped on {name} ({what}). "
            f"{_COMMITTED if committed else _NOT_COMMITTED}")
