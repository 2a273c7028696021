"""The records that flow between stages. Only plain fields and numpy arrays: cheap to pickle."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

ANNOTATED, SKIPPED, FAILED = "annotated", "skipped", "failed"


@dataclass(frozen=True)
class Shard:
    """One input file: its URL, size and version on its store (checksum or modification time).

    ``stale`` names the completion markers of the file's earlier states, to replace.
    """

    url: str
    size: int = 0
    version: str = ""
    stale: tuple[str, ...] = ()

    def with_(self, **changes) -> "Shard":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Document:
    """One input document; ``text`` is exactly as read (``None`` when it could not be read).

    ``key`` is unique per input record (file, or file and line) even when ids repeat.
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


@dataclass(frozen=True)
class Window:
    """One model input: sub-word ids with special tokens, and where each predicted word sits.

    ``positions[k]`` is the index in ``input_ids`` of the first sub-word of the word that
    spans characters ``starts[k]:ends[k]`` of the document.
    """

    key: str
    task: str
    head: str | None
    index: int
    input_ids: np.ndarray = field(repr=False)
    positions: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


@dataclass(frozen=True)
class WindowResult:
    """A window's predictions: a label id and its probability for each word it predicts."""

    key: str
    task: str
    head: str | None
    index: int
    starts: np.ndarray
    ends: np.ndarray
    label_ids: np.ndarray
    probs: np.ndarray = field(repr=False)
    error: str = ""  # the error class when this window could not be run


@dataclass(frozen=True)
class Failure:
    """A stage that failed for one document (and task): what a dead-letter row records.

    Only the error's class is kept: exception messages may quote document text.
    """

    key: str
    task: str
    stage: str
    error: str
