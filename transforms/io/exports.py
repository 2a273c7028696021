"""The outputs a run opts into (``--write``), written part by part beside the default outputs
and committed with them (see ``transforms.write``):

- ``<out>/cdm/cdm-<part>.jsonl``: one DT4H CDM ``NlpResponse`` per document
  (``transforms.formats.cdm``);
- ``<out>/note_nlp/parquet/note_nlp-<part>.parquet``: OMOP ``NOTE_NLP`` rows, one per mention
  (``transforms.formats.omop``), and the same rows in ``<out>/note_nlp/csv/note_nlp-<part>.csv``
  (with a header) for database loaders;
- ``<out>/_index/index-<part>.parquet``: per document of the part, in the part's order, its
  input shard and how many rows it has in each export. A commit drops a later duplicate's rows,
  and a rerun a redone shard's rows from earlier parts, by this index alone (no text is read).
"""

from __future__ import annotations

import json
import posixpath
from typing import Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from transforms.formats.omop import NOTE_NLP_SCHEMA
from transforms.core.records import CDM, NOTE_NLP
from transforms.io.storage import (ParquetSink, atomic_output, move, open_output, read_table,
                                   write_table)

INDEX = "index"
# what each export's part is made of: (folder under the output, file suffix) per file
LAYOUT = {CDM: (("cdm", ".jsonl"),),
          NOTE_NLP: (("note_nlp/parquet", ".parquet"), ("note_nlp/csv", ".csv")),
          INDEX: (("_index", ".parquet"),)}


def part_files(root: str, part: str, kinds: Iterable[str]) -> dict[str, str]:
    """The final files of a part's exports (and its index), by ``kind`` + suffix."""
    return {kind + suffix: posixpath.join(root, folder, f"{kind}-{part}{suffix}")
            for kind in (*kinds, INDEX) for folder, suffix in LAYOUT[kind]}


def tmp_files(folder: str, kinds: Iterable[str]) -> dict[str, str]:
    """The same files in a part's temporary folder."""
    return {kind + suffix: posixpath.join(folder, kind + suffix)
            for kind in (*kinds, INDEX) for _, suffix in LAYOUT[kind]}


def final_files(fs, root: str) -> Iterable[tuple[str, str]]:
    """``(part, path)`` of every committed export file."""
    for kind, files in LAYOUT.items():
        for folder, suffix in files:
            for path in fs.glob(posixpath.join(root, folder, f"{kind}-*{suffix}")):
                yield posixpath.basename(path)[len(kind) + 1:-len(suffix)], path


class ExportWriter:
    """A part's export files, written a document at a time in a temporary folder."""

    def __init__(self, folder: str, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        paths = tmp_files(folder, kinds)
        self._cdm = open_output(paths[CDM + ".jsonl"], "wb") if CDM in kinds else None
        self._note = (ParquetSink(paths[NOTE_NLP + ".parquet"], NOTE_NLP_SCHEMA,
                                  csv=paths[NOTE_NLP + ".csv"]) if NOTE_NLP in kinds else None)
        self._index = ParquetSink(paths[INDEX + ".parquet"], index_schema(kinds))

    def add(self, source: str, extra: Mapping[str, tuple]) -> None:
        """One document's export rows (``extra``: by export)."""
        counts = {kind: len(extra.get(kind, ())) for kind in self.kinds}
        if self._cdm is not None:
            for document in extra.get(CDM, ()):
                self._cdm.write(json.dumps(document, ensure_ascii=False).encode() + b"\n")
        if self._note is not None:
            self._note.write(extra.get(NOTE_NLP, ()))
        self._index.write([{"source": source, **counts}])

    def close(self) -> None:
        if self._cdm is not None:
            self._cdm.close()
        if self._note is not None:
            self._note.close()
        self._index.close()


def index_schema(kinds: Iterable[str]) -> pa.Schema:
    """A part index's columns: the document's input shard, its row count per export."""
    return pa.schema([("source", pa.string()), *((kind, pa.int32()) for kind in kinds)])


def rewrite(fs, src: Mapping[str, str], dst: Mapping[str, str],
            drop: Callable[[pa.Table], np.ndarray]) -> bool:
    """Write a part's exports from ``src`` files to ``dst`` files without the rows of the
    documents ``drop(index)`` marks; moved as they are when it marks none. Whether any went."""
    index = read_table(fs, src[INDEX + ".parquet"])
    dropped = np.asarray(drop(index), dtype=bool)
    if not dropped.any():
        for name, path in src.items():  # the index last: while it is there, work remains
            if path != dst[name] and fs.exists(path):
                move(fs, path, dst[name])
        return False
    keep_docs = ~dropped
    kinds = [k for k in index.column_names if k != "source"]
    for kind in kinds:
        keep = np.repeat(keep_docs, index[kind].to_numpy())
        if not fs.exists(src[kind + LAYOUT[kind][0][1]]):
            continue  # rewritten by an earlier try
        if kind == CDM:
            lines = fs.cat(src[CDM + ".jsonl"]).splitlines(keepends=True)
            with atomic_output(fs, dst[CDM + ".jsonl"]) as f:
                f.write(b"".join(line for line, k in zip(lines, keep) if k))
        else:
            table = read_table(fs, src[kind + ".parquet"]).filter(pa.array(keep))
            write_table(fs, dst[kind + ".parquet"], table)
            with atomic_output(fs, dst[kind + ".csv"]) as f:
                pacsv.write_csv(table, f)
    write_table(fs, dst[INDEX + ".parquet"], index.filter(pa.array(keep_docs)))
    for name, path in src.items():
        if path != dst[name] and fs.exists(path):
            fs.rm(path)
    return True


def drop_sources(fs, root: str, part: str, redone: pa.Array) -> None:
    """Remove the rows of the ``redone`` input shards from a committed part's exports. Safe to
    repeat after a crash anywhere in it: the kept rows are written aside (``_dropping/``), the
    originals removed (the index last), then the kept rows moved into their place."""
    staged_folder = posixpath.join(root, "_dropping", part)
    index = part_files(root, part, ())[INDEX + ".parquet"]
    staged_index = tmp_files(staged_folder, ())[INDEX + ".parquet"]
    found = next((p for p in (index, staged_index) if fs.exists(p)), None)
    if found is None:
        return
    with fs.open(found, "rb") as f:
        kinds = [k for k in pq.read_schema(f).names if k != "source"]
    files, staged = part_files(root, part, kinds), tmp_files(staged_folder, kinds)
    if found == index:
        rewrite(fs, files, staged,
                lambda t: pc.is_in(t["source"], value_set=redone).to_numpy(zero_copy_only=False))
    rewrite(fs, staged, files, lambda t: np.zeros(t.num_rows, bool))


def commit(fs, tmp: str, root: str, part: str, kinds: tuple[str, ...],
           dropped_rows: Iterable[int]) -> None:
    """Move a part's exports to their final names, without the rows of the part's document
    rows ``dropped_rows`` (duplicates); safe to retry (what was moved stays)."""
    src, dst = tmp_files(tmp, kinds), part_files(root, part, kinds)
    if not fs.exists(src[INDEX + ".parquet"]):
        return  # moved by an earlier try
    rows = np.array(sorted(set(dropped_rows)), dtype=np.int64)
    rewrite(fs, src, dst, lambda t: np.isin(np.arange(t.num_rows), rows))
