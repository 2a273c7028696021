"""Documents in groups for inference, and a group's windows in token-budget batches.

``GroupDocuments`` gathers whole documents (each with all its windows) up to a token budget
per group, in a buffer bounded by that budget: memory holds the documents in flight, never
the corpus. Inside a group, ``token_batches`` sorts the windows of all its documents by
length and cuts them into batches whose padded size (rows x longest) stays within the batch
budget, so padding is only to the batch's longest window, and on a CPU a batch takes in a
longer window only where that pads its others little.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from transforms.core.records import Work

T = TypeVar("T")
def token_batches(items: Sequence[T], length: Callable[[T], int], budget: int,
                  max_items: int, mix: int | None = None) -> list[list[T]]:
    """Sort ``items`` by ``length`` and cut them into batches of padded size <= ``budget``
    and at most ``max_items`` items, each as full as the budget allows unless a longer item
    would pad the batch's others by more than ``mix`` (None: any) sub-words; a single item
    longer than the budget is a batch of its own."""
    batches: list[list[T]] = []
    current: list[T] = []
    width = 0
    for item in sorted(items, key=length):
        n = length(item)
        if current and (len(current) >= max_items or n * (len(current) + 1) > budget
                        or (mix is not None and (n - width) * len(current) > mix)):
            batches.append(current)
            current = []
        current.append(item)
        width = n
    if current:
        batches.append(current)
    return batches


def work_tokens(work: Work) -> int:
    """Sub-words of all the windows of a document in flight."""
    return sum(int(w.id_bounds[-1]) for w in work.windows.values())


class GroupDocuments(beam.DoFn):
    """``Work`` items -> groups (tuples) of about ``budget`` tokens of windows, or at most
    ``max_documents`` documents; the buffer never holds more than one group."""

    def __init__(self, budget: int, max_documents: int = 4096) -> None:
        self._budget, self._max = budget, max_documents
        self._items: list[Work] = []
        self._tokens = 0

    def start_bundle(self) -> None:
        self._items, self._tokens = [], 0

    def process(self, work: Work) -> Iterator[tuple[Work, ...]]:
        self._items.append(work)
        self._tokens += work_tokens(work)
        if self._tokens >= self._budget or len(self._items) >= self._max:
            yield self._flush()

    def _flush(self) -> tuple[Work, ...]:
        group, self._items, self._tokens = tuple(self._items), [], 0
        return group

    def finish_bundle(self) -> Iterator:
        if self._items:
            yield GlobalWindows.windowed_value(self._flush())
