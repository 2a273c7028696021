"""The run's log: our lines, Beam's warnings, no progress bars, no document text.

``CLINICAL_NER_LOG_LEVEL`` sets the level (``DEBUG`` turns on Beam's own debug logging;
document text stays out of the logs at every level: the records' reprs hide it).
"""

from __future__ import annotations

import logging
import os
import re

LOG = logging.getLogger("pipeline")
_WRAPPED = re.compile(r"(?:^|\n)(?:\w+\.)*(\w+(?:Error|Exception|Fault|Missing)): ")


def configure_logging() -> None:
    """Log lines with time, level and logger; no progress bars in them (worker processes
    inherit the environment)."""
    level = os.environ.get("CLINICAL_NER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def stopped_message(e: BaseException) -> str:
    """One line for a job that stopped on a fault (of the machine, storage or model): what
    happened and what to do; never the exception's message (it may quote text)."""
    name = type(e).__name__
    found = _WRAPPED.findall(str(e))  # Beam re-raises a worker's error as "Name: message"
    if found:
        name = found[-1]
    return (f"pipeline.run: the job stopped on {name} (a fault of the machine, the storage or "
            "the model, not of a document; CLINICAL_NER_LOG_LEVEL=DEBUG shows where). Nothing "
            "of the unfinished input shards was committed: run the same command again to "
            "resume (shards already complete are skipped).")
