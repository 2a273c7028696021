"""Batches of windows from many documents by token budget, sorted by length.

Windows are buffered up to ``buffer`` at a time (memory is bounded by the buffer, not by the
corpus), sorted by length, and cut greedily into batches whose padded size (rows x longest)
stays within ``budget`` tokens and ``max_windows`` rows, so padding is only to the batch's
longest window and batches hold windows of similar lengths.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

T = TypeVar("T")


def token_batches(items: Sequence[T], length: Callable[[T], int], budget: int,
                  max_items: int) -> list[list[T]]:
    """Sort ``items`` by ``length`` and cut them into batches of padded size <= ``budget``
    (a single item longer than the budget is a batch of its own)."""
    batches: list[list[T]] = []
    current: list[T] = []
    for item in sorted(items, key=length):
        n = length(item)
        if current and (len(current) >= max_items or n * (len(current) + 1) > budget):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


class BatchByTokens(beam.DoFn):
    """Windows -> lists of windows, per ``token_batches`` over a bounded buffer."""

    def __init__(self, budget: int, max_windows: int, buffer: int = 4096,
                 pad_to: int | None = None) -> None:
        self._budget, self._max, self._buffer, self._pad_to = budget, max_windows, buffer, pad_to
        self._items: list = []

    def _length(self, window) -> int:
        return self._pad_to or len(window.input_ids)

    def start_bundle(self) -> None:
        self._items = []

    def process(self, window) -> Iterator[list]:
        self._items.append(window)
        if len(self._items) >= self._buffer:
            yield from self._flush()

    def _flush(self) -> Iterator[list]:
        items, self._items = self._items, []
        yield from token_batches(items, self._length, self._budget, self._max)

    def finish_bundle(self) -> Iterator:
        for batch in self._flush():
            yield GlobalWindows.windowed_value(batch)
