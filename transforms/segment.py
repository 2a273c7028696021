"""Documents -> model windows, on the CPU, once per tokenizer (tasks that share one share them).

``word_windows`` is the pipeline's way: training-regex words fed pre-split to the tokenizer,
sentences packed into windows, over-long sentences cut at word boundaries with overlap, each
word predicted once from its first sub-word. ``reference_windows`` is the reference scripts'
way (raw text, 512-token windows with stride 128, every word of every window votes), used by
``--reference_compat``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.core.faults import is_machine_fault
from transforms.core.method import Method
from transforms.core.records import Document, Failure, Windows, Work
from transforms.core.spec import TaskSpec
from transforms.io.storage import localize
from transforms.core.windows import REFERENCE_STRIDE, REFERENCE_WINDOW, plan_windows
from transforms.core.words import sentence_starts, split_words

_EMPTY_I32 = np.zeros(0, np.int32)
_EMPTY_I64 = np.zeros(0, np.int64)


@dataclass(frozen=True)
class RustTokenizer:
    """A ``tokenizer.json`` loaded with the ``tokenizers`` library alone (several times faster
    to load than through transformers), with the ids of the tokens that open and close a
    window."""

    _tokenizer: Any
    cls_token_id: int
    sep_token_id: int
    bos_token_id: int | None = None
    eos_token_id: int | None = None


def load_tokenizer(location: str, full: bool = False):
    """A tokenizer from a local folder: its ``tokenizer.json`` alone where that is all the
    pipeline's windows need, else (or with ``full``) transformers' ``AutoTokenizer``."""
    folder = Path(localize(location))
    if not full and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        names = {}
        for f in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / f).is_file():
                names = {**json.loads((folder / f).read_text(encoding="utf-8")), **names}

        def token_id(*keys: str) -> int | None:
            for key in keys:
                name = names.get(key)
                name = name.get("content") if isinstance(name, dict) else name
                if isinstance(name, str) and backend.token_to_id(name) is not None:
                    return backend.token_to_id(name)
            return None

        cls, sep = token_id("cls_token", "bos_token"), token_id("sep_token", "eos_token")
        if cls is not None and sep is not None:
            return RustTokenizer(backend, cls, sep)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def special_ids(tokenizer) -> tuple[int, int]:
    """The ids that open and close a window (``<s>``/``</s>`` for XLM-R)."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise ValueError("the tokenizer has no cls/bos and sep/eos tokens")
    return cls, sep


def pack(pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> Windows:
    """Windows from ``(ids, positions, starts, ends)`` per window."""
    if not pieces:
        zero = np.zeros(1, np.int64)
        return Windows(_EMPTY_I32, zero, _EMPTY_I32, zero.copy(), _EMPTY_I64, _EMPTY_I64)
    ids, pos, starts, ends = zip(*pieces)
    return Windows(
        np.concatenate(ids).astype(np.int32, copy=False),
        np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64),
        np.concatenate(pos).astype(np.int32, copy=False),
        np.concatenate([[0], np.cumsum([len(x) for x in pos])]).astype(np.int64),
        np.concatenate(starts).astype(np.int64, copy=False),
        np.concatenate(ends).astype(np.int64, copy=False),
    )


class SubWords:
    """Sub-word ids of pre-split words, one tokenizer call per word never seen before.

    With pre-split input a word's sub-words do not depend on its neighbours (checked when it
    is built; otherwise every call goes to the tokenizer), so they are kept, up to
    ``capacity`` words (then forgotten all at once): clinical text repeats its words, and the
    tokenizer's per-call cost was the largest share of the CPU side.
    """

    def __init__(self, tokenizer, capacity: int = 1 << 19) -> None:
        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "_tokenizer", None)  # the Rust tokenizer, if any
        self._ids: dict[str, list[int]] = {}
        self._capacity = capacity
        probe = ["Dolor", "dolor", "(", "x9x9", "dolor", "ñandú"]
        whole = self._encode(probe)
        self._cached = whole == [ids for w in probe for ids in self._encode([w])]

    def _encode(self, words: list[str]) -> list[list[int]]:
        """Each word's ids, from one tokenizer call."""
        if self._backend is not None:
            enc = self._backend.encode(words, is_pretokenized=True, add_special_tokens=False)
            ids, word_ids = enc.ids, enc.word_ids
        else:
            enc = self._tokenizer(words, is_split_into_words=True, add_special_tokens=False,
                                  verbose=False)
            ids, word_ids = enc["input_ids"], enc.word_ids()
        out: list[list[int]] = [[] for _ in words]
        for i, w in zip(ids, word_ids):
            out[w].append(i)
        return out

    def __call__(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All the words' ids in order, and how many each word has (no special tokens)."""
        if self._cached:
            known = self._ids
            new = [w for w in dict.fromkeys(words) if w not in known]
            if new and len(known) + len(new) > self._capacity:
                known.clear()
                new = list(dict.fromkeys(words))
            if new:
                known.update(zip(new, self._encode(new)))
            per_word = [known[w] for w in words]
        else:
            per_word = self._encode(words)
        counts = np.fromiter(map(len, per_word), np.int64, len(per_word))
        ids = np.fromiter(itertools.chain.from_iterable(per_word), np.int32, int(counts.sum()))
        return ids, counts


def word_windows(text: str, tokenizer, max_tokens: int = 512, overlap: int = 128,
                 sub_words: SubWords | None = None) -> Windows:
    """Windows of at most ``max_tokens`` ids (special tokens included) over the words of ``text``.

    Words the tokenizer maps to no sub-word (e.g. a zero-width space) are treated as whitespace.
    A word of more than ``max_tokens - 2`` sub-words keeps only its first ones.
    """
    starts, ends = split_words(text)
    if len(starts) == 0:
        return pack([])
    sub_words = sub_words or SubWords(tokenizer, capacity=0)
    ids, counts = sub_words([text[s:e] for s, e in zip(starts.tolist(), ends.tolist())])
    tok_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = counts > 0
    if not keep.all():
        starts, ends, counts, tok_start = starts[keep], ends[keep], counts[keep], tok_start[keep]
    if len(starts) == 0:
        return pack([])
    budget = max_tokens - 2
    capped = np.minimum(counts, budget)
    plans = plan_windows(capped, sentence_starts(text, starts, ends), budget, overlap)
    cls, sep = special_ids(tokenizer)
    ccum = np.concatenate([[0], np.cumsum(capped)])
    pieces = []
    for p in plans:
        if np.array_equal(capped[p.first:p.last], counts[p.first:p.last]):
            body = ids[tok_start[p.first]:tok_start[p.last - 1] + counts[p.last - 1]]
        else:
            body = np.concatenate(
                [ids[tok_start[i]:tok_start[i] + capped[i]] for i in range(p.first, p.last)]
            )
        own = slice(p.own_first, p.own_last)
        pieces.append((np.concatenate([[cls], body, [sep]]), 1 + ccum[own] - ccum[p.first],
                       starts[own], ends[own]))
    return pack(pieces)


def reference_windows(
    text: str, tokenizer, max_length: int = REFERENCE_WINDOW, stride: int = REFERENCE_STRIDE
) -> Windows:
    """The reference scripts' windows: raw text, truncation with overflow and stride.

    Every word of every window predicts (from its first sub-word), at the character span from
    its first sub-word's start to its last sub-word's end; spans of ``(0, 0)`` are skipped.
    """
    enc = tokenizer(
        text, truncation=True, max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    pieces = []
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
        pieces.append((np.asarray(ids, dtype=np.int32), np.asarray(pos, dtype=np.int32),
                       np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)))
    return pack(pieces)


class SegmentDoFn(beam.DoFn):
    """``Document`` -> ``Work`` with its windows for each tokenizer its tasks use.

    Tokenizers are loaded once per worker. A document whose segmentation fails is failed for
    the tasks of that tokenizer (stage ``segment``); its other tasks go on.
    """

    def __init__(self, specs: Mapping[str, TaskSpec], method: Method) -> None:
        self._key = {name: s.windows_key for name, s in specs.items()}
        self._location = {self._key[name]: s.tokenizer for name, s in specs.items()}
        self._method = method
        self._tokenizers: dict[str, object] = {}
        self._sub_words: dict[str, SubWords] = {}
        self._windows = {n: Metrics.counter("windows", n) for n in specs}
        self._tokens = {n: Metrics.distribution("windows", f"tokens_{n}") for n in specs}

    def setup(self) -> None:
        self._tokenizers = {key: load_tokenizer(location, full=self._method.reference_compat)
                            for key, location in self._location.items()}
        self._sub_words = {key: SubWords(t) for key, t in self._tokenizers.items()}

    def segment(self, text: str, key: str) -> Windows:
        """The windows of ``text`` for the tokenizer ``key``."""
        tokenizer = self._tokenizers[key]
        if self._method.reference_compat:
            return reference_windows(text, tokenizer)
        return word_windows(text, tokenizer, self._method.max_tokens, self._method.overlap,
                            self._sub_words[key])

    def process(self, doc: Document) -> Iterator[Work]:
        windows: dict[str, Windows] = {}
        failed: dict[str, str] = {}
        for key in dict.fromkeys(self._key[t] for t in doc.tasks):
            try:
                windows[key] = self.segment(doc.text, key)
            except Exception as e:  # a document the tokenizer rejects fails; the machine raises
                if is_machine_fault(e):
                    raise
                failed[key] = type(e).__name__
        failures = []
        for task in doc.tasks:
            key = self._key[task]
            if key in failed:
                failures.append(Failure(doc.key, task, "segment", failed[key]))
                continue
            self._windows[task].inc(len(windows[key]))
            for n in windows[key].lengths.tolist():
                self._tokens[task].update(n)
        yield Work(doc, windows, failures=tuple(failures))
