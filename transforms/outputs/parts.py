"""Parts: the rows of a bounded number of documents, every output's, with their index.

A part is written a document at a time in a temporary folder, then committed to its final
names (``transforms.outputs.commit``). Its index (``<out>/_index/index-<part>.parquet``) has a
row per document, in the part's order: its input shard (``source``) and, per output and stream,
how much of it the document's rows take. Dropping documents' rows from a part is the same for
every output, by that index alone (``rewrite``).
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.core.records import DocumentRows
from transforms.io.storage import move, open_output, read_table, write_table
from transforms.outputs import output
from transforms.outputs.base import File, Output, Sink

INDEX = File(folder="_index", suffix=".parquet", name="index-{part}{suffix}")
DOCUMENTS_PER_PART = 10_000


@dataclass(frozen=True)
class Place:
    """Where a part's files are: at their final names (``root``, ``part``) or in a folder of
    their own (``folder``: a temporary or staging folder)."""

    root: str = ""
    part: str = ""
    folder: str = ""

    def files(self, out: Output, stream: str) -> list[str]:
        """The files of one output's stream."""
        if self.folder:
            return out.tmp_paths(self.folder, stream)
        return out.paths(self.root, self.part, stream)

    @property
    def index(self) -> str:
        if self.folder:
            return posixpath.join(self.folder, "index.parquet")
        return INDEX.path(self.root, "index", self.part, "")


def final_index_files(fs, root: str) -> Iterator[tuple[str, str]]:
    """``(part, path)`` of every committed index."""
    glob, regex = INDEX.pattern(root, "index")
    for path in fs.glob(glob):
        found = regex.match(path)
        if found:
            yield found["part"], path


@dataclass(frozen=True)
class Part:
    """A part written under the run's temporary folder: which input shards it holds rows of."""

    name: str  # <run>-<id>
    tmp: str  # its temporary folder (URL)
    sources: tuple[str, ...]


@dataclass(frozen=True)
class DocRef:
    """A document's place in a part, without its text: enough to find duplicate ids, to
    skip a later duplicate's rows at commit and to count the document once that is decided."""

    doc_id: str
    source: str
    position: int
    key: str
    part: str
    row: int  # its row in the part's index
    status: str
    read_failed: bool
    counts: tuple[tuple[str, int], ...] = ()  # what it adds to the run's counts


class PartWriter:
    """One part of ``outputs``: their files and the index, in a temporary folder."""

    def __init__(self, tmp: str, run_id: str, outputs: Sequence[Output]) -> None:
        self.name = f"{run_id}-{uuid.uuid4().hex[:12]}"
        self.folder = posixpath.join(tmp, self.name)
        self._place = Place(folder=self.folder)
        self._outputs = tuple(outputs)
        self._sinks: dict[tuple[str, str], Sink] = {}
        self._index: list[dict] = []
        self._sources: set[str] = set()

    @property
    def documents(self) -> int:
        return len(self._index)

    def add(self, rows: DocumentRows) -> DocRef:
        """Write one document's rows, every output's."""
        doc = rows.document
        entry = {"source": doc["source"]}
        for out in self._outputs:
            for stream, these in out.rows(rows).items():
                if not these:
                    continue
                sink = self._sinks.get((out.name, stream))
                if sink is None:
                    sink = self._sinks[(out.name, stream)] = out.sink(
                        self._place.files(out, stream))
                entry[out.column(stream)] = sink.write(these)
        self._index.append(entry)
        self._sources.add(doc["source"])
        return DocRef(doc["doc_id"], doc["source"], rows.position, rows.key, self.name,
                      len(self._index) - 1, doc["status"], doc["reason"].startswith("read:"),
                      tuple(sorted(rows.counts.items())))

    def close(self) -> Part:
        for sink in self._sinks.values():
            sink.close()
        columns = [output(name).column(stream) for name, stream in self._sinks]
        index = {"source": pa.array([e["source"] for e in self._index], pa.string()),
                 **{c: pa.array([e.get(c, 0) for e in self._index], pa.int64())
                    for c in columns}}
        with open_output(self._place.index, "wb") as f:
            pq.write_table(pa.table(index), f)
        return Part(self.name, self.folder, tuple(sorted(self._sources)))


def streams(index: pa.Table) -> list[tuple[Output, str]]:
    """The (output, stream) pairs a part's index has columns of."""
    found = []
    for column in index.column_names:
        if column != "source":
            name, _, stream = column.partition("/")
            found.append((output(name), stream))
    return found


def rewrite(fs, src: Place, dst: Place, drop: Callable[[pa.Table], np.ndarray],
            skipped: Mapping[int, str] | None = None) -> None:
    """Move a part from ``src`` to ``dst`` without the rows of the documents ``drop(index)``
    marks, a ``skipped`` document's rows (by index row: the reason) as each output keeps
    them; moved as they are when nothing changes. Safe to repeat after a crash anywhere: the
    new index is written after every file, the old one is removed (or moved) last."""
    index = read_table(fs, src.index)
    dropped = np.asarray(drop(index), dtype=bool)
    changed = bool(dropped.any() or skipped)
    if changed and not fs.exists(dst.index):
        kept: dict[str, pa.Array] = {"source": index["source"].filter(pa.array(~dropped))}
        for out, stream in streams(index):
            column = out.column(stream)
            sizes = out.filter(fs, src.files(out, stream), dst.files(out, stream),
                               index[column].to_numpy(), dropped, skipped or {})
            kept[column] = pa.array(sizes, pa.int64())
        write_table(fs, dst.index, pa.table(kept))
    for out, stream in streams(index):
        for path, final in zip(src.files(out, stream), dst.files(out, stream)):
            if path == final or not fs.exists(path):
                continue
            if changed:
                fs.rm(path)
            else:
                move(fs, path, final)
    if changed:
        fs.rm(src.index)
    else:
        move(fs, src.index, dst.index)

