"""Entity linking's pure rules: the normalised form a mention and a term are matched on, how
ranked candidate lists are fused, and what a linked mention carries.

A mention is coded by exact match of its normalised form first (case, accents, punctuation
and spacing do not count); else by nearest neighbours (character n-grams, a dense encoder, or
both with their ranks fused); a mention no method finds stays uncoded, never dropped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

_NOT_WORD = re.compile(r"[\W_]+")
_N_TILDE = re.compile("([nN])\u0303")  # n + combining tilde: ñ, a letter of its own


class _Marks(dict):
    """``str.translate``'s table dropping combining marks (filled as characters are seen)."""

    def __missing__(self, code: int) -> int | None:
        self[code] = None if unicodedata.combining(chr(code)) else code
        return self[code]


_MARKS = _Marks()
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
LINK_COLUMNS = ("code", "code_term", "code_system", "concept_id", "link_score", "link_method",
                "link_candidates")
EXACT, NGRAM, DENSE, FUSED = "exact", "ngram", "dense", "fused"
# The least character n-gram similarity that codes a mention by default (``min_score:``
# changes it). Calibrated by ``python -m bench.linking``: on HPO synonyms of concepts in the
# terminology mixed with those of concepts left out of it, 0.85 of the codes given at 0.9 are
# right (0.39 at no threshold); of the codes of the probe's SPACCC mentions, 0.46 (0.17); of
# the held-out cases' words outside any gold mention, 2.3% are coded (all at no threshold).
NGRAM_MIN_SCORE = 0.9


def normalize(text: str) -> str:
    """The form terms and mentions are matched on: accents stripped (``ñ`` is a letter of its
    own, not an accented ``n``: año is not ano), case folded, every run of punctuation or
    spacing one space (``"Dolor  Abdominal."`` -> ``"dolor abdominal"``)."""
    if text.isascii():  # most of a clinical terminology's and notes' strings: no accents
        return _NOT_WORD.sub(" ", text.lower()).strip()
    decomposed = _N_TILDE.sub(lambda m: "ñ" if m[1] == "n" else "Ñ",
                              unicodedata.normalize("NFKD", text))
    return _NOT_WORD.sub(" ", decomposed.translate(_MARKS).casefold()).strip()


def char_ngrams(form: str, n: int = 3) -> list[str]:
    """A normalised form's character ``n``-grams within words, each word padded with a space
    on both sides (scikit-learn's ``char_wb``; a word shorter than ``n`` is one n-gram):
    ``"la tos"`` -> ``[" la", "la ", " to", "tos", "os "]``."""
    grams = []
    for word in form.split():
        padded = f" {word} "
        grams += [padded[i:i + n] for i in range(max(1, len(padded) - n + 1))]
    return grams


@dataclass(frozen=True, kw_only=True)
class Term:
    """One row of a terminology: a code's term (one of its synonyms), optionally in one
    language; ``concept_id``: its OMOP concept id where the terminology is an OMOP
    vocabulary; ``preferred``: the code's official term."""

    code: str
    term: str
    system: str
    language: str | None = None
    concept_id: int | None = None
    preferred: str | None = None


class Candidate(NamedTuple):
    """A term found for a mention: its index in the terminology, its score and method."""

    term: int
    score: float
    method: str


def fuse(rankings: Sequence[Sequence[Candidate]], k: int = RRF_K, top: int = 10
         ) -> list[Candidate]:
    """Reciprocal rank fusion of several methods' rankings (best first): a term's score is
    the sum of ``1 / (k + rank)`` over the rankings that hold it; best ``top`` first."""
    if len(rankings) == 1:
        return list(rankings[0][:top])
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, candidate in enumerate(ranking, start=1):
            scores[candidate.term] = scores.get(candidate.term, 0.0) + 1.0 / (k + rank)
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [Candidate(term, score, FUSED) for term, score in ordered]


def by_code(candidates: Iterable[Candidate], terms: Sequence[Term]) -> list[Candidate]:
    """Candidates with one entry per code (its best term), in order."""
    seen, out = set(), []
    for c in candidates:
        code = terms[c.term].code
        if code not in seen:
            seen.add(code)
            out.append(c)
    return out


def link_columns(candidates: Sequence[Candidate], terms: Sequence[Term]) -> dict:
    """The span columns of a mention's linking: its best code, the code's term and system,
    its OMOP concept id, the score and method, and the codes of every candidate (null where no
    candidate was found)."""
    if not candidates:
        return dict(unlinked(True))
    best = terms[candidates[0].term]
    return {"code": best.code, "code_term": best.preferred or best.term,
            "code_system": best.system, "concept_id": best.concept_id,
            "link_score": round(float(candidates[0].score), 6),
            "link_method": candidates[0].method,
            "link_candidates": [terms[c.term].code for c in candidates]}


def unlinked(covered: bool) -> Mapping[str, object]:
    """The link columns of a mention no linker covers (all null) or that one covers but
    found no code for (``link_candidates`` empty)."""
    return {**dict.fromkeys(LINK_COLUMNS), "link_candidates": [] if covered else None}
