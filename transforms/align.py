"""Window predictions -> character spans per document and task, plus one state row per document."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
import numpy as np

from pipeline.tasks import TaskSpec
from transforms.records import ANNOTATED, FAILED, Document, Failure, Row, WindowResult
from transforms.spans import LabelScheme, Span, decode_bio, reference_decode

DOCUMENTS, ERRORS = "documents", "errors"
LOG = logging.getLogger("pipeline")


def merge_windows(
    text: str, results: Iterable[WindowResult], scheme: LabelScheme, reference_compat: bool
) -> list[Span]:
    """The spans of one document for one task from all its windows' predictions."""
    ordered = sorted(results, key=lambda r: r.index)
    if not ordered:
        return []
    if reference_compat:
        labels = scheme.id2label
        votes = (
            (int(s), int(e), labels[int(k)], float(p))
            for r in ordered
            for s, e, k, p in zip(r.starts, r.ends, r.label_ids, r.probs)
        )
        return reference_decode(text, votes)
    starts = np.concatenate([r.starts for r in ordered])
    order = np.argsort(starts, kind="stable")
    return decode_bio(
        starts[order],
        np.concatenate([r.ends for r in ordered])[order],
        np.concatenate([r.label_ids for r in ordered])[order],
        np.concatenate([r.probs for r in ordered])[order],
        scheme,
    )


def span_row(doc: Document, task: str, span: Span) -> dict:
    """A span as an output row; ``text`` is ``document[start:end]``."""
    return Row(
        doc_id=doc.doc_id, task=task, label=span.label, start=span.start, end=span.end,
        text=doc.text[span.start:span.end], score=span.score, lang=doc.lang,
        source=doc.source,
    )


def document_row(doc: Document, n_spans: int) -> dict:
    """A document's final state: ``annotated``, ``skipped`` or ``failed`` with the reason."""
    return Row(
        doc_id=doc.doc_id, source=doc.source, lang=doc.lang, lang_source=doc.lang_source,
        lang_score=doc.lang_score, n_chars=len(doc.text) if doc.text is not None else 0,
        tasks=",".join(doc.tasks), status=doc.status or ANNOTATED, reason=doc.reason,
        n_spans=n_spans, meta=doc.meta,
    )


def error_row(doc: Document, failure: Failure) -> dict:
    """A dead letter: enough to find and reproduce the failure, never the text."""
    return {"doc_id": doc.doc_id, "key": doc.key, "source": doc.source, "task": failure.task,
            "stage": failure.stage, "error": failure.error}


class AlignDoFn(beam.DoFn):
    """(key, {doc, preds, failures}) -> span rows (main output), a document row
    (``documents``) and a dead letter per failure (``errors``).

    A document with a failed stage is ``failed`` (the reason names task, stage and error
    class); spans of its other tasks are still written.
    """

    PROGRESS_EVERY_S = 30.0  # at most one progress line per worker this often

    def __init__(self, specs: Mapping[str, TaskSpec], reference_compat: bool) -> None:
        self._specs = dict(specs)
        self._compat = reference_compat
        self._schemes: dict[tuple[str, str | None], LabelScheme] = {}
        self._done, self._t0, self._last = 0, 0.0, 0.0
        self._chars = Metrics.distribution("documents", "chars")
        self._spans = Metrics.distribution("documents", "spans_per_document")

    def _progress(self) -> None:
        """Log documents done and their rate, now and then (ids and counts only)."""
        self._done += 1
        now = time.monotonic()
        if now - self._last >= self.PROGRESS_EVERY_S:
            elapsed = now - self._t0
            LOG.info("progress: %d documents done by this worker, %.1f/s, %.0f s elapsed",
                     self._done, self._done / max(elapsed, 1e-9), elapsed)
            self._last = now

    def setup(self) -> None:
        self._t0 = self._last = time.monotonic()
        self._schemes = {
            (name, head): spec.scheme(head)
            for name, spec in self._specs.items() for head in spec.labels
        }

    def process(self, element) -> Iterator:
        _, grouped = element
        results: list[WindowResult] = list(grouped["preds"])
        failures: list[Failure] = list(grouped.get("failures", ()))
        failures += [Failure(r.key, r.task, "inference", r.error) for r in results if r.error]
        for doc in grouped["doc"]:
            if doc.status == FAILED:  # unreadable: already failed at the read stage
                failures.append(Failure(doc.key, "", "read", doc.reason.removeprefix("read: ")))
            n_spans = 0
            for task in doc.tasks:
                if any(f.task == task for f in failures):
                    continue
                mine = [r for r in results if r.task == task]
                scheme = self._schemes[(task, self._specs[task].head_for(doc.lang))]
                try:
                    spans = merge_windows(doc.text, mine, scheme, self._compat)
                except Exception as e:  # one bad document must not fail the job
                    failures.append(Failure(doc.key, task, "align", type(e).__name__))
                    continue
                n_spans += len(spans)
                for label, n in Counter(s.label for s in spans).items():
                    Metrics.counter("spans", f"{task}/{label}").inc(n)
                for span in spans:
                    yield span_row(doc, task, span)
            if failures:
                reason = "; ".join(f"{f.task + ' ' if f.task else ''}{f.stage}: {f.error}"
                                   for f in failures)
                doc = doc.with_(status=FAILED, reason=reason)
                for f in failures:
                    yield beam.pvalue.TaggedOutput(ERRORS, error_row(doc, f))
            Metrics.counter("documents", doc.status or ANNOTATED).inc()
            if doc.text is not None:
                self._chars.update(len(doc.text))
            if not doc.status:
                self._spans.update(n_spans)
            self._progress()
            yield beam.pvalue.TaggedOutput(DOCUMENTS, document_row(doc, n_spans))
