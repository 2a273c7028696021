"""The records that flow between stages. Only plain fields and numpy arrays: cheap to pickle.

A document travels with everything made from it: its windows (``Windows``, one set per
tokenizer), then each task's predictions (``Predictions``), in one ``Work`` item; items travel
through inference in groups (``tuple[Work, ...]``). No stage joins predictions back to their
document: they never leave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from transforms.core.spans import Span

ANNOTATED, SKIPPED, FAILED = "annotated", "skipped", "failed"


@dataclass(frozen=True)
class Shard:
    """One input file: its URL, size and version on its store (checksum or modification time).

    ``stale`` names the completion markers of the file's earlier states, to replace;
    ``earlier`` the output parts that hold rows of it from earlier runs, to remove.
    """

    url: str
    size: int = 0
    version: str = ""
    stale: tuple[str, ...] = ()
    earlier: tuple[str, ...] = ()

    def with_(self, **changes) -> "Shard":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Document:
    """One input document; ``text`` is exactly as read (``None`` when it could not be read).

    ``key`` is unique per input record (file, or file and line) even when ids repeat;
    ``position`` orders the records of one source (byte offset or row; 0 for a ``.txt`` file).
    """

    key: str
    doc_id: str
    text: str | None = field(repr=False)  # reprs reach logs (Beam logs elements at DEBUG)
    source: str
    lang: str | None = None
    lang_source: str | None = None
    lang_score: float | None = None
    tasks: tuple[str, ...] = ()
    status: str = ""
    reason: str = ""
    meta: str | None = field(default=None, repr=False)  # the record's other fields, as JSON
    position: int = 0

    def with_(self, **changes) -> "Document":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


class Row(dict):
    """An output row; its repr hides the fields that may hold document text."""

    HIDDEN = frozenset({"text", "meta"})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={'<hidden>' if k in self.HIDDEN else repr(v)}"
                          for k, v in self.items())
        return f"Row({shown})"


@dataclass(frozen=True, eq=False)
class Windows:
    """A document's model windows for one tokenizer, packed in flat arrays.

    Window ``k`` is ``ids[id_bounds[k]:id_bounds[k+1]]`` (special tokens included); it predicts
    words ``word_bounds[k]:word_bounds[k+1]``: word ``j`` spans characters
    ``starts[j]:ends[j]`` and is read at index ``positions[j]`` of its window (its first
    sub-word).
    """

    ids: np.ndarray = field(repr=False)
    id_bounds: np.ndarray
    positions: np.ndarray = field(repr=False)
    word_bounds: np.ndarray
    starts: np.ndarray = field(repr=False)
    ends: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.id_bounds) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Sub-words per window."""
        return np.diff(self.id_bounds)

    def window_ids(self, k: int) -> np.ndarray:
        """The ids of window ``k``."""
        return self.ids[self.id_bounds[k]:self.id_bounds[k + 1]]

    def window_positions(self, k: int) -> np.ndarray:
        """Where window ``k``'s words are read, as indices into its ids."""
        return self.positions[self.word_bounds[k]:self.word_bounds[k + 1]]


@dataclass(frozen=True, eq=False)
class Predictions:
    """One task's predictions for a document: per word (as in its ``Windows``) and per head, a
    label id and its probability."""

    heads: tuple[str | None, ...]
    label_ids: np.ndarray = field(repr=False)  # int16 [words, heads]
    probs: np.ndarray = field(repr=False)  # float32 [words, heads]


@dataclass(frozen=True)
class Failure:
    """A stage that failed for one document (and task): what a dead-letter row records.

    Only the error's class is kept: exception messages may quote document text.
    """

    key: str
    task: str
    stage: str
    error: str


@dataclass(frozen=True)
class Work:
    """A document in flight with what was made from it so far: its windows, its predictions,
    its decoded spans (by task), then its mentions as span rows (qualified, then linked)."""

    doc: Document
    windows: Mapping[str, Windows] = field(default_factory=dict)  # by tokenizer key
    predictions: Mapping[str, Predictions] = field(default_factory=dict)  # by task
    failures: tuple[Failure, ...] = ()
    spans: Mapping[str, tuple[Span, ...]] = field(default_factory=dict)  # by task
    mentions: tuple[Row, ...] = ()

    def with_(self, **changes) -> "Work":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def failed(self, task: str) -> bool:
        """Whether a stage failed for ``task``."""
        return any(f.task == task for f in self.failures)


@dataclass(frozen=True)
class DocumentRows:
    """What one document adds to the outputs: its state row, its span rows and dead letters,
    what it adds to the run's counts, and the rows of the outputs a run opts into (``extra``:
    by output, e.g. its CDM document, its NOTE_NLP rows); each output picks its own
    (``transforms.outputs``)."""

    document: Row
    spans: tuple[Row, ...] = ()
    errors: tuple[Row, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    key: str = ""  # the input record's key and position (to order records sharing an id)
    position: int = 0
    extra: Mapping[str, tuple] = field(default_factory=dict, repr=False)
