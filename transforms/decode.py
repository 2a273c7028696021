"""A document's predictions -> its spans, per task (``Work.spans``).

Each document arrives with its own windows and predictions (``Work``): nothing is joined. The
spans of every head of a task are decoded with that head's labels and kept side by side, so a
mention of one label may overlap one of another. A task whose predictions cannot be decoded
fails for that document (stage ``align``); its other tasks go on.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import apache_beam as beam
import numpy as np

from transforms.core.method import Method
from transforms.core.records import Failure, Work
from transforms.core.spans import LabelScheme, Span, decode_bio, reference_decode
from transforms.core.spec import TaskSpec


def decode_words(text: str, starts: np.ndarray, ends: np.ndarray, label_ids: np.ndarray,
                 probs: np.ndarray, scheme: LabelScheme, method: Method) -> list[Span]:
    """Spans from one head's word predictions (words in window order)."""
    if method.reference_compat:
        labels = scheme.id2label
        return reference_decode(text, ((int(s), int(e), labels[int(k)], float(p))
                                       for s, e, k, p in zip(starts, ends, label_ids, probs)))
    order = np.argsort(starts, kind="stable")
    return decode_bio(starts[order], ends[order], label_ids[order], probs[order], scheme)


class Decoder:
    """``Work`` -> the same with its spans per task (no Beam)."""

    def __init__(self, specs: Mapping[str, TaskSpec], method: Method) -> None:
        self._specs, self._method = dict(specs), method
        self._schemes = {(name, head): spec.scheme(head)
                         for name, spec in self._specs.items() for head in spec.labels}

    def __call__(self, work: Work) -> Work:
        found: dict[str, tuple[Span, ...]] = {}
        failures = list(work.failures)
        for task in work.doc.tasks:
            if work.failed(task):
                continue
            spans = self._task_spans(work, task)
            if isinstance(spans, Failure):
                failures.append(spans)
            else:
                found[task] = tuple(spans)
        return work.with_(spans=found, failures=tuple(failures))

    def _task_spans(self, work: Work, task: str) -> list[Span] | Failure:
        """One task's spans, all heads together, ordered by offsets and label."""
        spec, doc = self._specs[task], work.doc
        windows = work.windows[spec.windows_key]
        predictions = work.predictions[task]
        try:
            spans = []
            for h, head in enumerate(predictions.heads):
                spans += decode_words(doc.text, windows.starts, windows.ends,
                                      predictions.label_ids[:, h], predictions.probs[:, h],
                                      self._schemes[(task, head)], self._method)
        except Exception as e:  # noqa: BLE001 - one document that cannot be decoded fails
            return Failure(doc.key, task, "align", type(e).__name__)
        if len(predictions.heads) > 1:
            spans.sort(key=lambda s: (s.start, s.end, s.label))
        return spans


class DecodeDoFn(beam.DoFn):
    """``Work`` -> ``Work`` with its spans (``Decoder``)."""

    def __init__(self, specs: Mapping[str, TaskSpec], method: Method) -> None:
        self._specs, self._method = dict(specs), method
        self._decode: Decoder | None = None

    def setup(self) -> None:
        self._decode = Decoder(self._specs, self._method)

    def process(self, work: Work) -> Iterator[Work]:
        yield self._decode(work)
