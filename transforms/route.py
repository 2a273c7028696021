"""Each document's language, and the tasks that support it.

The language comes from the record's own field, else from ``--language``. A document that no
task can take (no text, no language, a language no task supports) is ``skipped`` with the
reason; it is not an error.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.tasks import normalize_lang
from transforms.records import SKIPPED, Document


def route(
    doc: Document, task_languages: Mapping[str, Sequence[str]], default_lang: str | None
) -> Document:
    """Set ``lang``, ``lang_source`` and ``tasks`` of a readable document, or skip it."""
    if doc.status:  # already failed while reading
        return doc
    if doc.lang:
        lang, source = normalize_lang(doc.lang), doc.lang_source or "record"
    elif default_lang:
        lang, source = normalize_lang(default_lang), "option"
    else:
        lang, source = None, None
    doc = doc.with_(lang=lang, lang_source=source)
    if not doc.text or doc.text.isspace():
        return doc.with_(status=SKIPPED, reason="empty text")
    if lang is None:
        return doc.with_(status=SKIPPED, reason="no language: give --language or a lang field")
    tasks = tuple(t for t, langs in task_languages.items() if lang in langs)
    if not tasks:
        return doc.with_(status=SKIPPED, reason=f"no task supports language {lang!r}")
    return doc.with_(tasks=tasks)
