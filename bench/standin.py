"""A stand-in GPU on the CPU, for ``python -m bench.feed``: the real job with a model that
behaves like one GPU shared by the machine.

``python -m bench.standin JOB OPTIONS`` is ``python -m pipeline.run JOB OPTIONS`` on a machine
with a GPU (the job's GPU defaults: batch budget, worker processes) with each task's model
replaced by a ``StandInModel`` (the rest of the job, Beam's model sharing included, is the
user's code path). The stand-in is configured by the ``CLINICAL_NER_STANDIN``
environment variable (a ``Device`` as JSON) and:

- on the host, per batch: pads it as the real model does and spends ``launch_s`` of CPU time
  (the Python side of launching a batch's kernels);
- on the device: one lock for the whole machine (a file every process locks), held
  ``token_s`` per real token of each batch by one device thread per process, while the host
  goes on (a CUDA stream: the batches of a call are queued, and the call waits once, for its
  last); a process's busy time, calls and bytes are written to ``folder`` after each call;
- labels a few words of a note (``label_share``, about what a real model finds), so that
  decoding and writing cost what they cost on a real night.

The job's per-stage host time (Beam's ``process_bundle_msecs``) and the worker processes it
chose are written to ``folder`` too.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transforms.core.predictor import Predictor, Request, Result
from transforms.handlers import TokenClassifierHandler

ENV = "CLINICAL_NER_STANDIN"
_BUNDLE_MSECS = "beam:metric:pardo_execution_time:process_bundle_msecs:v1"


@dataclass(frozen=True, kw_only=True)
class Device:
    """The stand-in GPU: where it records, and what a batch costs."""

    folder: str  # the lock file, each process's record, the stages' host time
    token_s: float  # device seconds per real token
    launch_s: float = 0.001  # host CPU seconds per batch
    label_share: float = 0.03  # the share of sub-words labelled B (a mention each)


class StandInModel(Predictor):
    """One process's handle on the stand-in GPU (its queue, its device thread, its record)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._stats = {"busy_s": 0.0, "first": None, "last": None, "batches": 0, "tokens": 0,
                       "calls": 0, "bytes_in": 0, "bytes_out": 0}
        self._record = Path(device.folder) / f"device-{os.getpid()}-{id(self)}.json"
        threading.Thread(target=self._run_device, daemon=True).start()

    def predict_many(self, batches: Sequence[Request], pad_to: int | None = None
                     ) -> list[Result | Exception]:
        from transforms.inference.models import pad

        results: list[Result | Exception] = []
        done = threading.Event()
        sent = received = 0
        for i, (windows, positions, heads) in enumerate(batches):
            pad(windows, 1, pad_to)  # the host's share of a real batch
            end = time.perf_counter() + self.device.launch_s
            while time.perf_counter() < end:  # launching kernels holds the interpreter
                pass
            tokens = sum(len(w) for w in windows)
            self._queue.put((tokens, done if i == len(batches) - 1 else None))
            picked = np.concatenate([w[p] for w, p in zip(windows, positions)])
            hashed = picked.astype(np.int64) * 2654435761 % 1000  # a few words, the same each run
            labelled = hashed < 1000 * self.device.label_share
            labels = np.repeat(labelled.astype(np.int16)[:, None], len(heads), 1)
            results.append((labels, np.full(labels.shape, 0.9, np.float32)))
            sent += sum(w.nbytes for w in windows) + sum(p.nbytes for p in positions)
            received += labels.nbytes + labels.size * 4  # label ids and probabilities
        if batches:
            done.wait()  # the call's one wait, for its last batch
        with self._lock:
            self._stats["calls"] += 1
            self._stats["bytes_in"] += sent
            self._stats["bytes_out"] += received
            record = json.dumps(self._stats)
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(record)
        os.replace(tmp, self._record)
        return results

    def release_memory(self) -> None:
        """Nothing held (out of memory is not simulated)."""

    def _run_device(self) -> None:
        """The device: each queued batch holds the machine's lock for its tokens' time."""
        with open(Path(self.device.folder) / "device.lock", "a+b") as lock:
            while True:
                tokens, done = self._queue.get()
                fcntl.flock(lock, fcntl.LOCK_EX)
                start = time.monotonic()
                time.sleep(tokens * self.device.token_s)
                end = time.monotonic()
                fcntl.flock(lock, fcntl.LOCK_UN)
                with self._lock:
                    s = self._stats
                    s["busy_s"] += end - start
                    s["first"] = start if s["first"] is None else s["first"]
                    s["last"] = end
                    s["batches"] += 1
                    s["tokens"] += tokens
                if done is not None:
                    done.set()


class StandInHandler(TokenClassifierHandler):
    """A task's handler whose model is the stand-in GPU (everything else the job's own)."""

    def __init__(self, *args, device: Device, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._device = device

    def load_model(self) -> StandInModel:
        return StandInModel(self._device)


def read_records(folder: Path) -> dict:
    """The stand-in's records of one job, over every process: device busy seconds and share
    (from the first batch's start to the last one's end), batches, tokens, calls, bytes."""
    rows = [json.loads(p.read_text()) for p in folder.glob("device-*.json")]
    rows = [r for r in rows if r["first"] is not None]
    if not rows:
        return {}
    span = max(r["last"] for r in rows) - min(r["first"] for r in rows)
    total = {k: sum(r[k] for r in rows) for k in ("busy_s", "batches", "tokens", "calls",
                                                  "bytes_in", "bytes_out")}
    stages, processes = folder / "stages.json", folder / "processes.json"
    return {**total, "processes": json.loads(processes.read_text()) if processes.exists()
            else None, "inferring_s": span, "busy_share": total["busy_s"] / span if span else None,
            "models": len(rows),
            "stage_ms": json.loads(stages.read_text()) if stages.exists() else {}}


def _stage_msecs(result, path: Path) -> None:
    """Beam's host milliseconds per step of the job (its first name), summed over workers."""
    from apache_beam.metrics import monitoring_infos

    stages: dict[str, int] = {}
    for info in result.monitoring_infos():
        if info.urn == _BUNDLE_MSECS:
            step = info.labels.get("PTRANSFORM", "").split("/")[0]
            stages[step] = stages.get(step, 0) + monitoring_infos.extract_counter_value(info)
    path.write_text(json.dumps(stages))


def main() -> None:
    """``pipeline.run``'s command line as on a GPU machine (its batch budget, its processes),
    with the stand-in GPU in place of each model."""
    import pipeline.options
    import pipeline.summary
    import transforms.handlers
    from bench import standin  # by its name, not __main__'s: workers import it
    import pipeline.run

    device = standin.Device(**json.loads(os.environ[ENV]))
    transforms.handlers.TokenClassifierHandler = functools.partial(standin.StandInHandler,
                                                                   device=device)
    totals = pipeline.summary.metric_totals

    def metric_totals(result):
        standin._stage_msecs(result, Path(device.folder) / "stages.json")
        return totals(result)

    pipeline.summary.metric_totals = metric_totals
    processes = pipeline.run.gpu_processes

    def gpu_processes(*args):
        chosen = processes(*args)
        (Path(device.folder) / "processes.json").write_text(json.dumps(chosen))
        return chosen

    pipeline.run.gpu_processes = gpu_processes
    pipeline.options.uses_gpu = lambda options, local: True  # a GPU job in every other way
    sys.argv[0] = "pipeline.run"
    pipeline.run.main()


if __name__ == "__main__":
    main()

