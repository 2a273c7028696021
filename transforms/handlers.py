"""The Beam ``ModelHandler`` of a task, used through ``RunInference``.

Each element is a group of documents in flight (``tuple[Work, ...]``, built upstream by
``GroupDocuments``), so RunInference's own batching is skipped; ``InferTask`` hands it to
RunInference as a ``TaskBatch``, whose length is the documents this task's model runs (what
Beam's ``num_inferences`` then counts: a group also carries documents of other tasks and
languages, and those that failed already). The handler sorts the windows
of the group's documents by length, cuts them into token-budget batches padded to their
longest window, hands the model all of them in one call (``Predictor.predict_many``: one round
trip through a proxy, one wait on a GPU), every head of the task on one encoder pass per batch,
and returns the group with each document's predictions attached: predictions never leave their
document.

Faults: a batch that fails for a fault of the data is retried window by window and only the
windows that fail alone fail their document (stage ``inference``). Out of memory retries the
batch in halves down to one window; a fault of the machine (accelerator error, out of memory
on one window, a lost model process) is raised so that the runner retries the bundle. A
model that fails on every window of a batch from several documents is broken, not fed bad
data: that is raised too.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from transforms.batch import token_batches
from transforms.core.windows import padded_length
from transforms.core.faults import is_machine_fault, is_out_of_memory
from transforms.core.predictor import Request, Result
from transforms.core.records import Failure, Predictions, Work
from transforms.core.spec import CPU_BATCH, TaskSpec
from transforms.inference.turns import gpu_turn

LOG = logging.getLogger("pipeline")
Group = tuple[Work, ...]


@dataclass(frozen=True)
class TaskBatch:
    """A group as one task's model sees it: ``len`` is the documents the model runs; the
    whole group travels on."""

    group: Group
    task: str

    def mine(self) -> list[Work]:
        """The documents routed to the task that have not failed it."""
        return [w for w in self.group if self.task in w.doc.tasks and not w.failed(self.task)]

    def __len__(self) -> int:
        return len(self.mine())


class ModelFault(RuntimeError):
    """The model failed on every window of a batch from several documents."""


@dataclass(frozen=True, kw_only=True)
class InferenceConfig:
    """How a task's model runs: precision, batching, device and threads (keyword-only: a
    positional value cannot land in the wrong field)."""

    precision: str = "auto"
    backend: str = "auto"  # where the encoder runs on a CPU: auto, torch, openvino
    batch_tokens: int = CPU_BATCH.tokens
    max_batch_windows: int = CPU_BATCH.windows
    # how far a longer window may pad a batch's others before it starts a new one (None: fill
    # to the budget, a GPU's rule); from the job's device, never from the model object (Beam's
    # large_model proxy has the model's methods only)
    batch_mix: int | None = CPU_BATCH.mix
    pad_to: int | None = None  # --reference_compat pads every window to 512
    compile: bool = False
    device: str = "auto"  # auto (CUDA when present), cpu, or cuda (an error without it)
    threads: int | None = None  # torch threads of the process that runs the model
    model_cache: str | None = None  # where conversions are shared among machines


class Slot(NamedTuple):
    """One window of one document of the group."""

    item: int
    window: int
    length: int


class TaskInference:
    """A group's windows for one task through a model's ``predict``: pure of Beam, testable."""

    def __init__(self, spec: TaskSpec, config: InferenceConfig) -> None:
        self.spec, self.config = spec, config
        self._real = Metrics.counter("tokens", f"real_{spec.name}")
        self._padding = Metrics.counter("tokens", f"padding_{spec.name}")
        self._failed = Metrics.counter("windows", f"failed_{spec.name}")

    def __call__(self, group: Group, model) -> Group:
        """The group with this task's predictions (or failures) attached to its documents."""
        spec, key = self.spec, self.spec.windows_key
        slots = [Slot(i, k, int(n))
                 for i, work in enumerate(group)
                 if spec.name in work.doc.tasks and not work.failed(spec.name)
                 for k, n in enumerate(work.windows[key].lengths)]
        if not slots:
            return group
        heads = {i: spec.heads_for(group[i].doc.lang) for i in {s.item for s in slots}}
        out = {i: (np.zeros((int(group[i].windows[key].word_bounds[-1]), len(h)), np.int16),
                   np.zeros((int(group[i].windows[key].word_bounds[-1]), len(h)), np.float32))
               for i, h in heads.items()}
        errors: dict[int, str] = {}
        pad_to = self.config.pad_to
        length = (lambda s: pad_to) if pad_to else (lambda s: padded_length(s.length))
        slots.sort(key=lambda s: s.length)  # stays in this order within a padded length
        batches = list(token_batches(slots, length, self.config.batch_tokens,
                                     self.config.max_batch_windows, self.config.batch_mix))
        # the group's batches in one call: one round trip through a proxy, one wait on a GPU
        results = self._predict(model, [self._request(group, key, heads, b) for b in batches])
        for batch, result in zip(batches, results):
            for slot, outcome in self._settle(group, key, heads, batch, model, result):
                if isinstance(outcome, str):
                    errors.setdefault(slot.item, outcome)
                    continue
                windows = group[slot.item].windows[key]
                a, b = windows.word_bounds[slot.window], windows.word_bounds[slot.window + 1]
                out[slot.item][0][a:b], out[slot.item][1][a:b] = outcome
        done = list(group)
        for i, h in heads.items():
            work = group[i]
            if i in errors:
                failure = Failure(work.doc.key, spec.name, "inference", errors[i])
                done[i] = work.with_(failures=work.failures + (failure,))
            else:
                done[i] = work.with_(predictions={**work.predictions,
                                                  spec.name: Predictions(h, *out[i])})
        return tuple(done)

    @staticmethod
    def _request(group: Group, key: str, heads: dict[int, tuple], batch: list[Slot]
                 ) -> Request:
        """What the model runs for ``batch``: its windows, their positions, the heads any of
        its documents needs."""
        windows = [group[s.item].windows[key] for s in batch]
        return ([w.window_ids(s.window) for w, s in zip(windows, batch)],
                [w.window_positions(s.window) for w, s in zip(windows, batch)],
                TaskInference._wanted(heads, batch))

    @staticmethod
    def _wanted(heads: dict[int, tuple], batch: list[Slot]) -> list[str | None]:
        """The heads any document of ``batch`` needs, in first-needed order: the columns of
        the model's results for it."""
        return list(dict.fromkeys(h for s in batch for h in heads[s.item]))

    def _run(self, group: Group, key: str, heads: dict[int, tuple], batch: list[Slot], model
             ) -> list[tuple[Slot, Any]]:
        """``batch`` through the model alone (a retry), settled."""
        result = self._predict(model, [self._request(group, key, heads, batch)])[0]
        return self._settle(group, key, heads, batch, model, result)

    def _predict(self, model, requests: list[Request]) -> list[Result | Exception]:
        """The model's results for ``requests``, on a GPU in this process's turn (given back
        before they are settled: ``transforms.inference.turns``); a call that fails as a whole
        (a lost proxy, a wait on the device) is each batch's failure, sorted as theirs."""
        try:
            with gpu_turn() if self.config.device == "cuda" else nullcontext():
                return model.predict_many(requests, self.config.pad_to)
        except Exception as e:  # noqa: BLE001 - sorted by _settle: machine faults raise
            return [e.with_traceback(None)] * len(requests)

    def _settle(self, group: Group, key: str, heads: dict[int, tuple], batch: list[Slot],
                model, result: Result | Exception) -> list[tuple[Slot, Any]]:
        """``(slot, (labels, probs))`` per window of a batch the model ran, or ``(slot, error
        class)`` for a window that the model rejects; faults of the machine are raised."""
        if isinstance(result, Exception):
            if is_machine_fault(result) and not (is_out_of_memory(result) and len(batch) > 1):
                raise result
            return self._retry(group, key, heads, batch, model, result)
        labels, probs = result
        wanted = self._wanted(heads, batch)
        real = sum(s.length for s in batch)
        width = self.config.pad_to or padded_length(max(s.length for s in batch))
        self._real.inc(real)
        self._padding.inc(len(batch) * width - real)
        results, offset = [], 0
        for s in batch:
            n = len(group[s.item].windows[key].window_positions(s.window))
            columns = [wanted.index(h) for h in heads[s.item]]
            results.append((s, (labels[offset:offset + n, columns],
                                probs[offset:offset + n, columns])))
            offset += n
        return results

    def _retry(self, group: Group, key: str, heads: dict[int, tuple], batch: list[Slot],
               model, error: Exception) -> list[tuple[Slot, Any]]:
        """A batch that failed: out of memory, in halves; else window by window, so that only
        the windows that fail alone fail their document."""
        if is_out_of_memory(error):
            model.release_memory()
            half = len(batch) // 2
            return (self._run(group, key, heads, batch[:half], model)
                    + self._run(group, key, heads, batch[half:], model))
        if len(batch) == 1:
            self._failed.inc()
            return [(batch[0], type(error).__name__)]
        results = [r for s in batch for r in self._run(group, key, heads, [s], model)]
        if len({s.item for s in batch}) > 1 and all(isinstance(r, str) for _, r in results):
            raise ModelFault(
                f"task {self.spec.name}: the model failed on each of {len(batch)} windows "
                f"of {len({s.item for s in batch})} documents ({type(error).__name__}): a "
                "fault of the model or the machine, not of the data") from error
        return results


class TokenClassifierHandler(ModelHandler[TaskBatch, Group, Any]):
    """Runs one task's model (``hf`` or ``mtl``) on groups of documents."""

    def __init__(self, spec: TaskSpec, config: InferenceConfig = InferenceConfig(),
                 large_model: bool = False) -> None:
        super().__init__(large_model=large_model)
        self._spec, self._config = spec, config
        self._inference: TaskInference | None = None

    def load_model(self):
        """The task's model: from its cached OpenVINO conversion and the few tensors that run
        beside it where there is one (no torch model built); else the torch model, placed
        (converted for OpenVINO and cached, or cast for torch)."""
        import torch

        from transforms.inference import models

        config, spec = self._config, self._spec
        if config.threads:
            torch.set_num_threads(config.threads)
        device = models.pick_device(config.device)
        heads = [h for h in spec.all_heads if h]
        precision = models.openvino_choice(config.backend, config.precision, device)
        files = precision and (models.hf_files(spec.model) if spec.kind == "hf" else
                               models.mtl_files(spec.model, spec.encoder, heads, spec.revision))
        model = files and models.cached_openvino(files, precision, config.threads,
                                                 config.model_cache)
        if model:
            runs_as = model.runs_as
        else:
            keyed = precision is not None  # an OpenVINO conversion, keyed by the files
            model = (models.load_hf(spec.model, device, spec.revision, keyed)
                     if spec.kind == "hf" else
                     models.load_mtl(spec.model, spec.encoder, heads, device, spec.revision,
                                     keyed))
            runs_as = model.use(config.backend, config.precision, config.threads,
                                config.model_cache)
        if config.compile and runs_as.startswith("torch"):
            model.compile()
        LOG.info("task %s: model loaded in process %d (%s, %s, %d threads)", spec.name,
                 os.getpid(), device, runs_as, torch.get_num_threads())
        return model

    @property
    def task(self) -> str:
        return self._spec.name

    def run_inference(self, batch: TaskBatch, model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[Group]:
        """``batch`` is one group of documents; returns it with this task's predictions."""
        if self._inference is None:
            self._inference = TaskInference(self._spec, self._config)
        return [self._inference(batch.group, model)]

    def get_num_bytes(self, batch: TaskBatch) -> int:
        key = self._spec.windows_key
        return sum(work.windows[key].ids.nbytes for work in batch.mine())

    def get_metrics_namespace(self) -> str:
        return f"RunInference_{self._spec.name}"

    def should_skip_batching(self) -> bool:
        return True


class InferTask(beam.PTransform):
    """Groups -> groups with one task's predictions: its ``RunInference``, fed ``TaskBatch``es."""

    def __init__(self, handler: TokenClassifierHandler) -> None:
        super().__init__()
        self._handler = handler

    def expand(self, groups):
        return (groups
                | "ForTask" >> beam.Map(TaskBatch, self._handler.task)
                | "RunInference" >> RunInference(self._handler))
