"""A document's spans -> its mentions as span rows (``Work.mentions``), each with the flags
of the qualifier tasks that ran on it (``negated``, ``uncertain`` and their scope scores;
None where none did). A qualifier task's own cues and scopes are rows too, unflagged."""

from __future__ import annotations

from typing import Iterator, Mapping

import apache_beam as beam

from transforms.core.qualify import flag_columns, scopes_by_flag
from transforms.core.records import Document, Row, Work
from transforms.core.spans import Span
from transforms.core.spec import TaskSpec


def span_row(doc: Document, task: str, span: Span, flags: Mapping[str, object]) -> Row:
    """A span as an output row with its qualifier flags; ``text`` is ``document[start:end]``."""
    return Row(
        doc_id=doc.doc_id, task=task, label=span.label, start=span.start, end=span.end,
        text=doc.text[span.start:span.end], score=span.score, lang=doc.lang,
        source=doc.source, **flags,
    )


class Qualifier:
    """``Work`` -> the same with its mention rows, flagged (no Beam)."""

    def __init__(self, specs: Mapping[str, TaskSpec]) -> None:
        self._qualifies = {name: dict(spec.qualifies) for name, spec in specs.items()}

    def __call__(self, work: Work) -> Work:
        scopes: dict[str, list[Span]] = {}
        for task, spans in work.spans.items():
            for flag, found in scopes_by_flag(spans, self._qualifies[task]).items():
                scopes.setdefault(flag, []).extend(found)
        rows = []
        for task, spans in work.spans.items():
            qualified = {} if self._qualifies[task] else scopes
            flags = flag_columns([(s.start, s.end) for s in spans], qualified)
            rows += [span_row(work.doc, task, s, f) for s, f in zip(spans, flags)]
        return work.with_(mentions=tuple(rows))


class QualifyDoFn(beam.DoFn):
    """``Work`` -> ``Work`` with its flagged mention rows (``Qualifier``)."""

    def __init__(self, specs: Mapping[str, TaskSpec]) -> None:
        self._qualify = Qualifier(specs)

    def process(self, work: Work) -> Iterator[Work]:
        yield self._qualify(work)
