"""Each document's language, and the tasks that support it.

The language comes from, in this order: the record's own field, the MultiClinAI file-name
pattern (``MultiClinNER-<lang>-...``), ``--language``, else detection. A document that no task
can take (no text, ``und``, a language no task supports) is ``skipped`` with the reason; it is
not an error.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import apache_beam as beam

from transforms.inference.language import LOOKALIKES, Detected, LanguageDetector, lang_from_name
from transforms.core.records import SKIPPED, Document
from transforms.core.spec import is_lang_code, normalize_lang

RECORD, FILENAME, OPTION, DETECTED = "record", "filename", "option", "detected"
NOT_A_LANGUAGE = "the record's language is not a language code (ISO 639)"


def assign_language(doc: Document, default_lang: str | None,
                    detect: Callable[[str], Detected] | None, always_detect: bool = False
                    ) -> Document:
    """Set ``lang``, ``lang_source`` and ``lang_score`` from the first source that has one
    (``always_detect``: detection whatever the others say)."""
    if always_detect:
        doc, default_lang = doc.with_(lang=None), None
    name_lang = None if always_detect else lang_from_name(doc.doc_id)
    if doc.lang:
        lang = normalize_lang(doc.lang)
        if not is_lang_code(lang):  # free text there may be text: never echoed
            return doc.with_(lang=None, lang_source=RECORD, status=SKIPPED,
                             reason=NOT_A_LANGUAGE)
        return doc.with_(lang=lang, lang_source=RECORD)
    if name_lang:
        return doc.with_(lang=normalize_lang(name_lang), lang_source=FILENAME)
    if default_lang:
        return doc.with_(lang=normalize_lang(default_lang), lang_source=OPTION)
    if detect is not None and doc.text and not doc.text.isspace():
        found = detect(doc.text)
        return doc.with_(lang=found.lang, lang_source=DETECTED, lang_score=found.score)
    return doc


def route(doc: Document, task_languages: Mapping[str, Sequence[str]]) -> Document:
    """Set ``tasks`` of a document whose language is known, or skip it with the reason."""
    if doc.status:  # already failed (reading) or skipped (its language)
        return doc
    if not doc.text or doc.text.isspace():
        return doc.with_(status=SKIPPED, reason="empty text")
    if not doc.lang or doc.lang == "und":
        return doc.with_(status=SKIPPED, reason="language undetermined (und)")
    tasks = tuple(t for t, langs in task_languages.items() if doc.lang in langs)
    if not tasks:
        return doc.with_(status=SKIPPED, reason=f"no task supports language {doc.lang!r}")
    return doc.with_(tasks=tasks)


class RouteDoFn(beam.DoFn):
    """Language, then the tasks that support it."""

    def __init__(self, task_languages: Mapping[str, Sequence[str]], default_lang: str | None,
                 min_confidence: float = 0.2, always_detect: bool = False) -> None:
        self._tasks = {t: tuple(langs) for t, langs in task_languages.items()}
        self._default, self._always = default_lang, always_detect
        self._min_confidence = min_confidence
        self._detector: LanguageDetector | None = None

    def detect(self, text: str) -> Detected:
        """Detection, its models loaded on first use (records often carry their language)."""
        if self._detector is None:
            wanted = {lang for langs in self._tasks.values() for lang in langs}
            self._detector = LanguageDetector(wanted | set(LOOKALIKES),
                                              min_confidence=self._min_confidence)
        return self._detector.detect(text)

    def process(self, doc: Document) -> Iterator[Document]:
        if not doc.status:
            doc = assign_language(doc, self._default, self.detect, self._always)
        yield route(doc, self._tasks)
