"""From per-word labels to character spans: pure functions, no Beam.

``decode_bio`` is the pipeline's decoder: BIO at word level, vectorised. Its policy for an
``I-X`` that does not continue an open ``X`` entity (after ``O``, at the start, or after another
type) is to *begin* a new ``X`` entity there, as seqeval and the CoNLL scripts do: a model that
skips the ``B-`` still finds the mention.

``reference_decode`` reproduces the reference scripts' decoder (votes per word span, their
B/I/O rules and their edge trimming) for ``--reference_compat``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

import numpy as np

_O, _B, _I = 0, 1, 2
_TAG_RE = re.compile(r"^([BI])-(.+)$")


class Span(NamedTuple):
    """A mention: character offsets ``[start, end)``, label and mean word probability."""

    label: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class LabelScheme:
    """A validated BIO label map, as arrays indexed by label id."""

    id2label: tuple[str, ...]
    kinds: np.ndarray  # 0 = O, 1 = B, 2 = I
    entity: np.ndarray  # index into ``entities``; -1 for O
    entities: tuple[str, ...]


def bio_scheme(id2label: Mapping[int | str, str]) -> LabelScheme:
    """Validate a model's ``id2label`` as BIO (``O``, ``B-X``, ``I-X``) and index it.

    Raises ``ValueError`` naming the offending labels when the map is not BIO.
    """
    ids = sorted(int(k) for k in id2label)
    if ids != list(range(len(ids))) or not ids:
        raise ValueError(f"label ids must be 0..n-1, got {ids}")
    labels = tuple(str(id2label[k] if k in id2label else id2label[str(k)]) for k in ids)
    kinds = np.zeros(len(labels), dtype=np.int8)
    entity = np.full(len(labels), -1, dtype=np.int32)
    entities: list[str] = []
    bad = []
    for i, lab in enumerate(labels):
        if lab == "O":
            continue
        m = _TAG_RE.match(lab)
        if not m:
            bad.append(lab)
            continue
        if m.group(2) not in entities:
            entities.append(m.group(2))
        kinds[i] = _B if m.group(1) == "B" else _I
        entity[i] = entities.index(m.group(2))
    if bad or labels.count("O") != 1:
        raise ValueError(
            f"labels {list(labels)} are not BIO: need exactly one 'O' and 'B-X'/'I-X' tags"
            + (f"; not BIO: {bad}" if bad else "")
        )
    for k, name in enumerate(entities):
        have = {int(kinds[i]) for i in range(len(labels)) if entity[i] == k}
        if have != {_B, _I}:
            raise ValueError(f"entity {name!r} needs both B-{name} and I-{name} in {list(labels)}")
    return LabelScheme(labels, kinds, entity, tuple(entities))


def decode_bio(
    starts: np.ndarray,
    ends: np.ndarray,
    label_ids: np.ndarray,
    probs: np.ndarray,
    scheme: LabelScheme,
) -> list[Span]:
    """Decode word labels (words in text order) into word-aligned character spans."""
    if len(label_ids) == 0:
        return []
    label_ids = np.asarray(label_ids, dtype=np.int64)
    kind = scheme.kinds[label_ids]
    ent = scheme.entity[label_ids]
    prev_kind = np.concatenate([[_O], kind[:-1]])
    prev_ent = np.concatenate([[-1], ent[:-1]])
    cont = (kind == _I) & (prev_kind != _O) & (prev_ent == ent)
    inside = kind != _O
    begin = inside & ~cont
    next_cont = np.concatenate([cont[1:], [False]])
    finish = inside & ~next_cont
    first = np.flatnonzero(begin)
    last = np.flatnonzero(finish)
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(probs, dtype=np.float64))])
    scores = (csum[last + 1] - csum[first]) / (last + 1 - first)
    return [
        Span(scheme.entities[ent[f]], int(starts[f]), int(ends[l]), float(sc))
        for f, l, sc in zip(first, last, scores)
    ]


def _is_edge_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def reference_trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The reference scripts' trimming: whitespace off both edges, then punctuation."""
    while start < end and text[start].isspace():
        start += 1
    while start < end and text[end - 1].isspace():
        end -= 1
    while start < end and _is_edge_punct(text[start]):
        start += 1
    while start < end and _is_edge_punct(text[end - 1]):
        end -= 1
    return start, end


def reference_vote(labels: list[str]) -> str:
    """Majority label of one word span; among tied labels the first seen wins, ``O`` last."""
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    top = max(counts.values())
    tied = [lab for lab, n in counts.items() if n == top]
    if len(tied) > 1 and "O" in tied:
        tied.remove("O")
    return tied[0]


def reference_decode(
    text: str, votes: Iterable[tuple[int, int, str, float]]
) -> list[Span]:
    """Decode ``(start, end, label, prob)`` votes, given in window order, as the reference does.

    Votes are pooled per exact character span; spans are walked in ``(start, end)`` order; ``B-``
    opens an entity, ``I-`` of the open type extends it (any other ``I-`` is ignored), ``O``
    closes it; each entity is trimmed with ``reference_trim`` and dropped if empty.
    """
    pooled: dict[tuple[int, int], list[tuple[str, float]]] = defaultdict(list)
    for s, e, lab, p in votes:
        pooled[(s, e)].append((lab, p))
    words = []
    for (s, e), vs in sorted(pooled.items()):
        lab = reference_vote([v[0] for v in vs])
        words.append((s, e, lab, max(p for v, p in vs if v == lab)))

    out: list[Span] = []
    cur: str | None = None
    s0 = e0 = 0
    ps: list[float] = []

    def flush() -> None:
        if cur is not None:
            s, e = reference_trim(text, s0, e0)
            if s < e:
                out.append(Span(cur, s, e, float(np.mean(ps))))

    for s, e, lab, p in words:
        if lab.startswith("B-"):
            flush()
            cur, s0, e0, ps = lab[2:], s, e, [p]
        elif lab.startswith("I-"):
            if cur == lab[2:]:
                e0 = e
                ps.append(p)
        else:
            flush()
            cur = None
    flush()
    return out
