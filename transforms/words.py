"""Word splitting as the DT4H models were trained: pure functions, no Beam.

Training split text with ``[0-9A-Za-zÀ-ÖØ-öø-ÿ]+|[^0-9A-Za-zÀ-ÖØ-öø-ÿ]`` and dropped
whitespace: a run of Latin letters and digits is one word, any other non-space character is a
word of its own. Offsets are characters of the original string (CRLF and all).
"""

from __future__ import annotations

import re

import numpy as np

_LATIN = "0-9A-Za-zÀ-ÖØ-öø-ÿ"
WORD_RE = re.compile(rf"[{_LATIN}]+|[^{_LATIN}\s]")
_SENTENCE_END = frozenset(".!?")


def split_words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the (start, end) character offsets of the training-regex words of ``text``."""
    spans = [m.span() for m in WORD_RE.finditer(text)]
    if not spans:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    arr = np.asarray(spans, dtype=np.int64)
    return arr[:, 0].copy(), arr[:, 1].copy()


def sentence_starts(text: str, starts: np.ndarray, ends: np.ndarray) -> list[int]:
    """Indices of the words that begin a sentence (always 0 for a non-empty list).

    A sentence ends at a line break, or after ``.``, ``!`` or ``?`` followed by whitespace
    (so ``1.5`` and ``p.ej.`` inside a line do not split).
    """
    if len(starts) == 0:
        return []
    out = [0]
    for i in range(1, len(starts)):
        gap = text[ends[i - 1]:starts[i]]
        if not gap:
            continue
        if "\n" in gap or "\r" in gap or "\u2028" in gap or "\u2029" in gap:
            out.append(i)
        elif text[ends[i - 1] - 1] in _SENTENCE_END and ends[i - 1] - starts[i - 1] == 1:
            out.append(i)
    return out
