"""Word splitting as the DT4H models were trained: pure functions, no Beam.

Training split text with ``[0-9A-Za-zÀ-ÖØ-öø-ÿ]+|[^0-9A-Za-zÀ-ÖØ-öø-ÿ]`` and dropped
whitespace: a run of Latin letters and digits is one word, any other non-space character is a
word of its own. Offsets are characters of the original string (CRLF and all). Both functions
work on the text's code points as a numpy array (no Python loop per word).
"""

from __future__ import annotations

import re

import numpy as np

_LATIN = "0-9A-Za-zÀ-ÖØ-öø-ÿ"
WORD_RE = re.compile(rf"[{_LATIN}]+|[^{_LATIN}\s]")  # the rule, as the training regex says it
# Latin letters and digits, by code point (index 256 stands for every code point above 255).
_IS_LATIN = np.zeros(257, dtype=bool)
for _a, _b in ((48, 57), (65, 90), (97, 122), (192, 214), (216, 246), (248, 255)):
    _IS_LATIN[_a:_b + 1] = True
# What Python's ``\s`` matches (all of it below U+3001; index 0x3001 stands for the rest).
_IS_SPACE = np.array([chr(c).isspace() for c in range(0x3001)] + [False], dtype=bool)
_IS_BREAK = np.zeros(0x202B, dtype=bool)  # line breaks (index 0x202A stands for the rest)
_IS_BREAK[[0x0A, 0x0D, 0x2028, 0x2029]] = True
_IS_FINAL = np.zeros(257, dtype=bool)  # sentence-final punctuation
_IS_FINAL[[ord("."), ord("!"), ord("?")]] = True
_EMPTY = np.zeros(0, dtype=np.int64)


def code_points(text: str) -> np.ndarray:
    """The text's code points (lone surrogates kept), one per character."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def split_words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the (start, end) character offsets of the training-regex words of ``text``."""
    cp = code_points(text)
    if len(cp) == 0:
        return _EMPTY, _EMPTY.copy()
    latin = _IS_LATIN[np.minimum(cp, 256)]
    other = ~latin & ~_IS_SPACE[np.minimum(cp, 0x3001)]
    starts = latin.copy()
    starts[1:] &= ~latin[:-1]
    ends = latin.copy()
    ends[:-1] &= ~latin[1:]
    return np.flatnonzero(starts | other), np.flatnonzero(ends | other) + 1


def sentence_starts(text: str, starts: np.ndarray, ends: np.ndarray) -> list[int]:
    """Indices of the words that begin a sentence (always 0 for a non-empty list).

    A sentence ends at a line break, or after ``.``, ``!`` or ``?`` followed by whitespace
    (so ``1.5`` and ``p.ej.`` inside a line do not split).
    """
    if len(starts) == 0:
        return []
    cp = code_points(text)
    prev_end, next_start = ends[:-1], starts[1:]
    breaks = np.flatnonzero(_IS_BREAK[np.minimum(cp, 0x202A)])
    has_break = np.searchsorted(breaks, next_start) > np.searchsorted(breaks, prev_end)
    final = _IS_FINAL[np.minimum(cp[prev_end - 1], 256)]  # (only one-character words end so)
    begins = (next_start > prev_end) & (has_break | final)
    return [0, *(np.flatnonzero(begins) + 1).tolist()]
