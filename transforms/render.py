"""A document's mentions -> its rows in every output (``DocumentRows``) and its counts.

The default outputs' rows are the document's state row, its mention rows and its dead
letters; each opt-in output (``--write``) renders its own from them (``Output.render``). A
document an opt-in output cannot hold (a NOTE_NLP row needs an integer note id) fails, with
the reason, and every output then says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.records import ANNOTATED, FAILED, Document, DocumentRows, Failure, Row, Work
from transforms.core.spec import TaskSpec
from transforms.formats.cdm import RunInfo
from transforms.outputs import OPT_IN, output


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


def counts(work: Work, doc: Document, specs: Mapping[str, TaskSpec]) -> dict[str, int]:
    """What one document adds to the run's counts (the one source of them: the write stage
    counts each record once its duplicate state is decided)."""
    found: Counter = Counter()
    for task in doc.tasks:
        windows = work.windows.get(specs[task].windows_key)
        if windows is not None:
            found[f"windows/{task}"] += len(windows)
            found[f"tokens/real_{task}"] += int(windows.id_bounds[-1])
    for row in work.mentions:
        found[f"spans/{row['task']}/{row['label']}"] += 1
        if row.get("link_candidates") is not None:
            found[f"links/{row['label']}/{'coded' if row['code'] else 'uncoded'}"] += 1
    found["documents/read"] += 1
    found[f"documents/{doc.status or ANNOTATED}"] += 1
    found[f"documents/lang_{doc.lang or 'none'}"] += 1
    for task in doc.tasks:
        found[f"documents/task_{task}"] += 1
    return dict(found)


class Renderer:
    """``Work`` -> ``DocumentRows`` for the opt-in ``outputs`` (no Beam)."""

    def __init__(self, specs: Mapping[str, TaskSpec], outputs: tuple[str, ...] = (),
                 info: RunInfo | None = None) -> None:
        self._specs = dict(specs)
        self._opt_in = [output(name) for name in OPT_IN if name in outputs]
        self._info = info or RunInfo()

    def __call__(self, work: Work) -> DocumentRows:
        doc, failures = work.doc, list(work.failures)
        if doc.status == FAILED:  # unreadable: already failed at the read stage
            failures.append(Failure(doc.key, "", "read", doc.reason.removeprefix("read: ")))
        # the qualifiers' cues and scopes are not mentions of the opt-in outputs
        mentions = [r for r in work.mentions if not self._specs[r["task"]].qualifies]
        doc = self._state(work.doc, failures)
        document = document_row(doc, len(work.mentions))
        extra: dict[str, tuple] = {}
        left_out: list[Failure] = []
        for out in self._opt_in:
            try:
                extra[out.name] = out.render(doc, document, mentions, self._info)
            except ValueError as e:  # written without this document: it is not failed for it
                extra[out.name] = ()
                left_out.append(Failure(doc.key, "", out.name, str(e)))
        found = counts(work, doc, self._specs)
        for f in left_out:
            found[f"documents/left_out_of_{f.stage}"] = 1
        return DocumentRows(document, work.mentions,
                            tuple(error_row(doc, f) for f in failures + left_out), found,
                            doc.key, doc.position, extra)

    @staticmethod
    def _state(doc: Document, failures: list[Failure]) -> Document:
        if not failures:
            return doc
        reason = "; ".join(f"{f.task + ' ' if f.task else ''}{f.stage}: {f.error}"
                           for f in failures)
        return doc.with_(status=FAILED, reason=reason)


class RenderDoFn(beam.DoFn):
    """``Work`` -> ``DocumentRows`` (``Renderer``), with the per-document distributions."""

    def __init__(self, specs: Mapping[str, TaskSpec], outputs: tuple[str, ...] = (),
                 info: RunInfo | None = None) -> None:
        self._specs, self._outputs, self._info = dict(specs), outputs, info
        self._render: Renderer | None = None
        self._chars = Metrics.distribution("documents", "chars")
        self._spans = Metrics.distribution("documents", "spans_per_document")

    def setup(self) -> None:
        self._render = Renderer(self._specs, self._outputs, self._info)

    def process(self, work: Work) -> Iterator[DocumentRows]:
        rows = self._render(work)
        if work.doc.text is not None:
            self._chars.update(len(work.doc.text))
        if rows.document["status"] == ANNOTATED:
            self._spans.update(len(rows.spans))
        yield rows
