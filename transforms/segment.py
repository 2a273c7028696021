"""Documents -> model windows, on the CPU, with each task's tokenizer.

``word_windows`` is the pipeline's way: training-regex words fed pre-split to the tokenizer,
sentences packed into windows, over-long sentences cut at word boundaries with overlap, each
word predicted once from its first sub-word. ``reference_windows`` is the reference scripts'
way (raw text, 512-token windows with stride 128, every word of every window votes), used by
``--reference_compat``.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.records import Document, Failure, Window
from transforms.windows import plan_windows
from transforms.words import sentence_starts, split_words

FAILURES = "failures"
REFERENCE_WINDOW, REFERENCE_STRIDE = 512, 128


class Piece(NamedTuple):
    """A window's ids (with special tokens) and the words it predicts."""

    input_ids: np.ndarray
    positions: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def _special_ids(tokenizer) -> tuple[int, int]:
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise ValueError("the tokenizer has no cls/bos and sep/eos tokens")
    return cls, sep


def word_windows(text: str, tokenizer, max_tokens: int = 512, overlap: int = 128) -> list[Piece]:
    """Windows of at most ``max_tokens`` ids (special tokens included) over the words of ``text``.

    Words the tokenizer maps to no sub-word (e.g. a zero-width space) are treated as whitespace.
    A word of more than ``max_tokens - 2`` sub-words keeps only its first ones.
    """
    starts, ends = split_words(text)
    if len(starts) == 0:
        return []
    words = [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    counts = np.bincount(np.asarray(enc.word_ids(), dtype=np.int64), minlength=len(words))
    tok_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = counts > 0
    starts, ends, counts, tok_start = starts[keep], ends[keep], counts[keep], tok_start[keep]
    if len(starts) == 0:
        return []
    budget = max_tokens - 2
    capped = np.minimum(counts, budget)
    plans = plan_windows(capped, sentence_starts(text, starts, ends), budget, overlap)
    cls, sep = _special_ids(tokenizer)
    ccum = np.concatenate([[0], np.cumsum(capped)])
    out = []
    for p in plans:
        if np.array_equal(capped[p.first:p.last], counts[p.first:p.last]):
            body = ids[tok_start[p.first]:tok_start[p.last - 1] + counts[p.last - 1]]
        else:
            body = np.concatenate(
                [ids[tok_start[i]:tok_start[i] + capped[i]] for i in range(p.first, p.last)]
            )
        own = slice(p.own_first, p.own_last)
        out.append(Piece(
            np.concatenate([[cls], body, [sep]]).astype(np.int32),
            (1 + ccum[own] - ccum[p.first]).astype(np.int32),
            starts[own], ends[own],
        ))
    return out


def reference_windows(
    text: str, tokenizer, max_length: int = REFERENCE_WINDOW, stride: int = REFERENCE_STRIDE
) -> list[Piece]:
    """The reference scripts' windows: raw text, truncation with overflow and stride.

    Every word of every window predicts (from its first sub-word), at the character span from
    its first sub-word's start to its last sub-word's end; spans of ``(0, 0)`` are skipped.
    """
    enc = tokenizer(
        text, truncation=True, max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    out = []
    for w, ids in enumerate(enc["input_ids"]):
        offsets = enc["offset_mapping"][w]
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i, wid in enumerate(enc.word_ids(w)):
            if wid is not None:
                first.setdefault(wid, i)
                last[wid] = i
        pos, starts, ends = [], [], []
        for wid in sorted(first):
            s, e = offsets[first[wid]][0], offsets[last[wid]][1]
            if s == 0 and e == 0:
                continue
            pos.append(first[wid])
            starts.append(s)
            ends.append(e)
        out.append(Piece(np.asarray(ids, dtype=np.int32), np.asarray(pos, dtype=np.int32),
                         np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)))
    return out


class SegmentDoFn(beam.DoFn):
    """``Document`` -> ``Window``s for one task (tokenizer loaded once per worker)."""

    def __init__(self, spec, max_tokens: int, overlap: int, reference_compat: bool) -> None:
        self._spec = spec
        self._max_tokens = max_tokens
        self._overlap = overlap
        self._compat = reference_compat
        self._tokenizer = None
        self._windows = Metrics.counter("windows", spec.name)
        self._tokens = Metrics.distribution("windows", f"tokens_{spec.name}")

    def setup(self) -> None:
        from transformers import AutoTokenizer

        from transforms.models import localize

        self._tokenizer = AutoTokenizer.from_pretrained(localize(self._spec.tokenizer))

    def process(self, doc: Document) -> Iterator[Window]:
        try:
            if self._compat:
                pieces = reference_windows(doc.text, self._tokenizer)
            else:
                pieces = word_windows(doc.text, self._tokenizer, self._max_tokens, self._overlap)
        except Exception as e:  # one bad document must not fail the job
            yield beam.pvalue.TaggedOutput(FAILURES, Failure(doc.key, self._spec.name, "segment",
                                                             type(e).__name__))
            return
        head = self._spec.head_for(doc.lang)
        self._windows.inc(len(pieces))
        for i, p in enumerate(pieces):
            self._tokens.update(len(p.input_ids))
            yield Window(doc.key, self._spec.name, head, i, *p)
