"""Model windows over words: pure functions, no Beam.

Whole sentences are packed into a window up to a token budget. A sentence longer than the
budget is cut at word boundaries into windows that overlap by at most ``overlap`` tokens; every
word in an overlap is *owned* by the one window where it sits furthest from an edge, so each
word gets exactly one prediction and no word is ever split between windows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

REFERENCE_WINDOW, REFERENCE_STRIDE = 512, 128  # the DT4H reference scripts' windows

PAD_MULTIPLE = 32  # batches are padded to a multiple of this: few distinct shapes, so kernel and
# allocator caches stay small (with every length its own shape, memory grew with the corpus)


def padded_length(n: int) -> int:
    """The length a window of ``n`` sub-words is padded to in a batch where it is the longest."""
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


class WindowPlan(NamedTuple):
    """Words ``[first, last)`` go into the window; words ``[own_first, own_last)`` are its own."""

    first: int
    last: int
    own_first: int
    own_last: int


def plan_windows(
    token_counts: np.ndarray, sentence_starts: list[int], budget: int, overlap: int
) -> list[WindowPlan]:
    """Plan windows over words with ``token_counts`` sub-words each (no special tokens).

    ``budget`` is the most sub-words a window holds; a word with more sub-words than that must
    be capped by the caller (its first sub-word is the one that carries its label).
    """
    if budget < 1 or not 0 <= 2 * overlap <= budget:
        raise ValueError(f"need budget >= 1 and 0 <= 2 * overlap <= budget, got {budget}, {overlap}")
    counts = np.asarray(token_counts, dtype=np.int64)
    if len(counts) and counts.max() > budget:
        raise ValueError("a word has more sub-words than the window budget; cap it first")
    cum = np.concatenate([[0], np.cumsum(counts)])
    n = len(counts)
    bounds = list(sentence_starts) + [n]
    plans: list[WindowPlan] = []
    cur_first = cur_last = 0
    for s, e in zip(bounds[:-1], bounds[1:]):
        if cum[e] - cum[cur_first] <= budget:
            cur_last = e
            continue
        if cur_last > cur_first:
            plans.append(WindowPlan(cur_first, cur_last, cur_first, cur_last))
        if cum[e] - cum[s] <= budget:
            cur_first, cur_last = s, e
        else:
            plans.extend(_cut_long(cum, s, e, budget, overlap))
            cur_first = cur_last = e
    if cur_last > cur_first:
        plans.append(WindowPlan(cur_first, cur_last, cur_first, cur_last))
    return plans


def _cut_long(cum: np.ndarray, s: int, e: int, budget: int, overlap: int) -> list[WindowPlan]:
    """Cut words ``[s, e)`` into overlapping windows and split each overlap at its middle."""
    spans: list[tuple[int, int]] = []
    a = s
    while True:
        b = int(np.searchsorted(cum, cum[a] + budget, side="right")) - 1
        b = min(b, e)
        spans.append((a, b))
        if b == e:
            break
        c = int(np.searchsorted(cum, cum[b] - overlap, side="left"))
        a = max(c, a + 1)
    owners = [s]
    for (a0, b0), (a1, _) in zip(spans[:-1], spans[1:]):
        # Word i (a1 <= i < b0) stays with the left window while its distance to that
        # window's right edge is at least its distance to the right window's left edge.
        i = np.arange(a1, b0)
        keep_left = (cum[b0] - cum[i + 1]) >= (cum[i] - cum[a1])
        owners.append(int(a1 + keep_left.sum()))
    owners.append(e)
    return [WindowPlan(a, b, owners[k], owners[k + 1]) for k, (a, b) in enumerate(spans)]
