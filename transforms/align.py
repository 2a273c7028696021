"""A document's predictions -> its character spans, its state row and its dead letters.

Each document arrives with its own windows and predictions (``Work``): nothing is joined. The
spans of every head of a task are decoded with that head's labels and kept side by side, so a
mention of one label may overlap one of another.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.formats.cdm import RunInfo, response
from transforms.formats.omop import NoteIdError, note_nlp_rows
from transforms.core.qualify import flag_columns, scopes_by_flag
from transforms.core.records import (ANNOTATED, CDM, FAILED, NOTE_NLP, Document, DocumentRows,
                                     Failure, Row, Work)
from transforms.core.spans import LabelScheme, Span, decode_bio, reference_decode
from transforms.core.spec import TaskSpec


def decode_words(text: str, starts: np.ndarray, ends: np.ndarray, label_ids: np.ndarray,
                 probs: np.ndarray, scheme: LabelScheme, reference_compat: bool) -> list[Span]:
    """Spans from one head's word predictions (words in window order)."""
    if reference_compat:
        labels = scheme.id2label
        return reference_decode(text, ((int(s), int(e), labels[int(k)], float(p))
                                       for s, e, k, p in zip(starts, ends, label_ids, probs)))
    order = np.argsort(starts, kind="stable")
    return decode_bio(starts[order], ends[order], label_ids[order], probs[order], scheme)


def span_row(doc: Document, task: str, span: Span, flags: Mapping[str, object]) -> Row:
    """A span as an output row with its qualifier flags; ``text`` is ``document[start:end]``."""
    return Row(
        doc_id=doc.doc_id, task=task, label=span.label, start=span.start, end=span.end,
        text=doc.text[span.start:span.end], score=span.score, lang=doc.lang,
        source=doc.source, **flags,
    )


def document_row(doc: Document, n_spans: int) -> Row:
    """A document's final state: ``annotated``, ``skipped`` or ``failed`` with the reason."""
    return Row(
        doc_id=doc.doc_id, source=doc.source, lang=doc.lang, lang_source=doc.lang_source,
        lang_score=doc.lang_score, n_chars=len(doc.text) if doc.text is not None else 0,
        tasks=",".join(doc.tasks), status=doc.status or ANNOTATED, reason=doc.reason,
        n_spans=n_spans, meta=doc.meta,
    )


def error_row(doc: Document, failure: Failure) -> Row:
    """A dead letter: enough to find and reproduce the failure, never the text."""
    return Row(doc_id=doc.doc_id, key=doc.key, source=doc.source, task=failure.task,
               stage=failure.stage, error=failure.error)


class Aligner:
    """``Work`` -> ``DocumentRows`` for the tasks of a task file (no Beam), with the rows of
    the ``outputs`` a run opts into (``cdm``: its CDM document; ``note_nlp``: its mentions as
    NOTE_NLP rows; a document with mentions and no integer note id fails with the reason)."""

    def __init__(self, specs: Mapping[str, TaskSpec], reference_compat: bool,
                 outputs: tuple[str, ...] = (), info: RunInfo | None = None) -> None:
        self._specs = dict(specs)
        self._compat = reference_compat
        self._outputs = outputs
        self._info = info or RunInfo()
        self._schemes = {(name, head): spec.scheme(head)
                         for name, spec in self._specs.items() for head in spec.labels}

    def __call__(self, work: Work) -> DocumentRows:
        doc, failures = work.doc, list(work.failures)
        if doc.status == FAILED:  # unreadable: already failed at the read stage
            failures.append(Failure(doc.key, "", "read", doc.reason.removeprefix("read: ")))
        found: dict[str, list[Span]] = {}
        counts: Counter = Counter()
        for task in doc.tasks:
            spec = self._specs[task]
            windows = work.windows.get(spec.windows_key)
            if windows is not None:
                counts[f"windows/{task}"] += len(windows)
                counts[f"tokens/real_{task}"] += int(windows.id_bounds[-1])
            if any(f.task == task for f in failures):
                continue
            task_spans = self._task_spans(work, task)
            if isinstance(task_spans, Failure):
                failures.append(task_spans)
            else:
                found[task] = task_spans
        spans = self._rows(doc, found, counts)
        # the qualifiers' cues and scopes are not mentions of the opt-in outputs
        mentions = [r for r in spans if not self._specs[r["task"]].qualifies]
        extra: dict[str, tuple] = {}
        if NOTE_NLP in self._outputs:
            try:
                extra[NOTE_NLP] = tuple(note_nlp_rows(document_row(doc, len(spans)), doc.text,
                                                      mentions, self._info))
            except NoteIdError as e:
                failures.append(Failure(doc.key, "", NOTE_NLP, str(e)))
                extra[NOTE_NLP] = ()
        if failures:
            reason = "; ".join(f"{f.task + ' ' if f.task else ''}{f.stage}: {f.error}"
                               for f in failures)
            doc = doc.with_(status=FAILED, reason=reason)
        counts["documents/read"] += 1
        counts[f"documents/{doc.status or ANNOTATED}"] += 1
        counts[f"documents/lang_{doc.lang or 'none'}"] += 1
        for task in doc.tasks:
            counts[f"documents/task_{task}"] += 1
        document = document_row(doc, len(spans))
        if CDM in self._outputs:
            extra[CDM] = (response(document, doc.text, mentions, self._info),)
        return DocumentRows(document, tuple(spans), tuple(error_row(doc, f) for f in failures),
                            dict(counts), doc.key, doc.position, extra)

    def _rows(self, doc: Document, found: Mapping[str, list[Span]], counts: Counter
              ) -> list[Row]:
        """Span rows of every task; the mentions of the tasks that qualify nothing get the
        flags of the qualifier tasks that ran on the document (None where none did)."""
        scopes: dict[str, list[Span]] = {}
        for task, task_spans in found.items():
            for flag, flag_scopes in scopes_by_flag(task_spans,
                                                    self._specs[task].qualifies).items():
                scopes.setdefault(flag, []).extend(flag_scopes)
        rows = []
        for task, task_spans in found.items():
            qualified = {} if self._specs[task].qualifies else scopes
            flags = flag_columns([(s.start, s.end) for s in task_spans], qualified)
            for span, span_flags in zip(task_spans, flags):
                counts[f"spans/{task}/{span.label}"] += 1
                rows.append(span_row(doc, task, span, span_flags))
        return rows

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
                                      self._schemes[(task, head)], self._compat)
        except Exception as e:  # noqa: BLE001 - one document that cannot be decoded fails
            return Failure(doc.key, task, "align", type(e).__name__)
        if len(predictions.heads) > 1:
            spans.sort(key=lambda s: (s.start, s.end, s.label))
        return spans


class AlignDoFn(beam.DoFn):
    """``Work`` -> ``DocumentRows`` (one element per document), counting spans and states."""

    def __init__(self, specs: Mapping[str, TaskSpec], reference_compat: bool,
                 outputs: tuple[str, ...] = (), info: RunInfo | None = None) -> None:
        self._specs, self._compat = dict(specs), reference_compat
        self._outputs, self._info = outputs, info
        self._align: Aligner | None = None
        self._chars = Metrics.distribution("documents", "chars")
        self._spans = Metrics.distribution("documents", "spans_per_document")

    def setup(self) -> None:
        self._align = Aligner(self._specs, self._compat, self._outputs, self._info)

    def process(self, work: Work) -> Iterator[DocumentRows]:
        rows = self._align(work)
        for name, n in rows.counts.items():
            if name.startswith(("documents/", "spans/")) and name != "documents/read":
                Metrics.counter(*name.split("/", 1)).inc(n)  # the others where they are made
        if work.doc.text is not None:
            self._chars.update(len(work.doc.text))
        if rows.document["status"] == ANNOTATED:
            self._spans.update(len(rows.spans))
        yield rows
