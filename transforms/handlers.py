"""Beam ``ModelHandler``s for the two model kinds, used through ``RunInference``.

Elements are batches (lists of ``Window``) built upstream by token budget, so the handlers skip
RunInference's own batching. A batch is padded only to its longest window (or to a fixed
length for ``--reference_compat``). Only numpy arrays go in and out.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from pipeline.tasks import TaskSpec
from transforms.models import TokenClassifier, load_hf, load_mtl
from transforms.records import Window, WindowResult

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX-512 BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``--precision`` on ``device`` (``auto``: bf16 where it is fast:
    CUDA with bf16, or a CPU with AMX or AVX-512 BF16; else fp16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def pad_batch(windows: Sequence[Window], pad_id: int, pad_to: int | None = None):
    """Stack windows into (ids, attention mask), padded to the longest or to ``pad_to``."""
    length = pad_to or max(len(w.input_ids) for w in windows)
    ids = np.full((len(windows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), length), dtype=np.int64)
    for r, w in enumerate(windows):
        ids[r, : len(w.input_ids)] = w.input_ids
        mask[r, : len(w.input_ids)] = 1
    return ids, mask


class TokenClassifierHandler(ModelHandler[Sequence[Window], WindowResult, TokenClassifier]):
    """Runs one task's model (``hf`` or ``mtl``) on batches of windows."""

    def __init__(self, spec: TaskSpec, precision: str = "auto", pad_to: int | None = None,
                 large_model: bool = False, compile_model: bool = False) -> None:
        super().__init__(large_model=large_model)
        self._spec = spec
        self._precision = precision
        self._pad_to = pad_to
        self._compile = compile_model

    def load_model(self) -> TokenClassifier:
        device = pick_device()
        dtype = resolve_dtype(self._precision, device)
        spec = self._spec
        if spec.kind == "hf":
            model = load_hf(spec.model, device, dtype)
        else:
            heads = sorted({h for h in spec.heads.values() if h is not None})
            model = load_mtl(spec.model, spec.encoder, heads, device, dtype)
        if self._compile:
            model.compile()
        return model

    def run_inference(
        self, batch: Sequence[Window], model: TokenClassifier,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[WindowResult]:
        """Run the batch; if it fails, run its windows one by one so that only the culprit
        fails (it comes back with ``error`` set)."""
        try:
            return list(self._run(batch, model))
        except Exception as e:  # a model error on one window must not fail the others
            if len(batch) == 1:
                w = batch[0]
                return [WindowResult(w.key, w.task, w.head, w.index, w.starts, w.ends,
                                     np.zeros(0, np.int16), np.zeros(0, np.float32),
                                     error=type(e).__name__)]
            return [r for w in batch for r in self.run_inference([w], model, inference_args)]

    def _run(self, batch: Sequence[Window], model: TokenClassifier) -> Iterable[WindowResult]:
        ids, mask = pad_batch(batch, model.pad_id, self._pad_to)
        real = int(mask.sum())
        Metrics.counter("tokens", f"real_{self._spec.name}").inc(real)
        Metrics.counter("tokens", f"padding_{self._spec.name}").inc(ids.size - real)
        preds = model.predict(ids, mask, [w.positions for w in batch], [w.head for w in batch])
        for w, (label_ids, probs) in zip(batch, preds):
            yield WindowResult(w.key, w.task, w.head, w.index, w.starts, w.ends,
                               label_ids.astype(np.int16), probs)

    def get_num_bytes(self, batch: Sequence[Window]) -> int:
        return sum(w.input_ids.nbytes for w in batch)

    def get_metrics_namespace(self) -> str:
        return f"RunInference_{self._spec.name}"

    def should_skip_batching(self) -> bool:
        return True
