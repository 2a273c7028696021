"""What every output kind declares: its files, its rows per document, and how they are dropped.

A part holds, per output and stream (a stream is one file set: the TSV has one per task), the
rows of its documents in their order, and an index (``parts``) of how many each document has
(rows of a Parquet file, bytes of a text file). Dropping a document's rows (a later duplicate's,
a redone shard's) is then the same for every kind: keep the others' rows, by the index alone,
without reading any text. Rows of a ``skipped`` document (a later duplicate) go too, unless
the output keeps a row saying so (``skip``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from transforms.core.records import DocumentRows, Row
from transforms.io.storage import ParquetSink, atomic_output, open_output, read_table, write_table


@dataclass(frozen=True, kw_only=True)
class File:
    """One file of a part's output: ``folder`` (under the output; ``{stream}`` for an output
    with one file per stream) and ``name`` (``{output}``, ``{part}``, ``{suffix}``)."""

    folder: str
    suffix: str
    name: str = "{output}-{part}{suffix}"

    def path(self, root: str, output: str, part: str, stream: str) -> str:
        """Its final path."""
        return posixpath.join(root, self.folder.format(stream=stream),
                              self.name.format(output=output, part=part, suffix=self.suffix))

    def pattern(self, root: str, output: str) -> tuple[str, re.Pattern]:
        """A glob of its final paths, and a regex that reads ``part`` and ``stream`` back."""
        template = posixpath.join(root, self.folder, self.name).format(
            stream="\0s", output=output, part="\0p", suffix=self.suffix)
        glob = template.replace("\0s", "*").replace("\0p", "*")
        regex = re.escape(template).replace("\0s", "(?P<stream>[^/]+)").replace(
            "\0p", "(?P<part>[^/]+)")
        return glob, re.compile(regex + "$")


class Sink:
    """The files of one stream of one part, written a document at a time."""

    def write(self, rows: Sequence) -> int:
        """Append one document's rows; how much they take (rows or bytes, as the output
        counts)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Output:
    """An output kind. ``files``: what a part holds of one stream; ``opt_in``: written when
    ``--write`` names it."""

    name: str
    files: tuple[File, ...]
    fix = ""  # an opt-in output that leaves documents out: what they need to be written
    def rows(self, doc: DocumentRows) -> Mapping[str, Sequence]:
        """A document's rows, by stream (``""`` for an output of one stream)."""
        raise NotImplementedError

    def sink(self, paths: Sequence[str]) -> Sink:
        """A writer of one stream's files at ``paths`` (as ``files``)."""
        raise NotImplementedError

    def filter(self, fs, src: Sequence[str], dst: Sequence[str], sizes: np.ndarray,
               drop: np.ndarray, skipped: Mapping[int, str]) -> np.ndarray:
        """Write ``dst`` from ``src`` without the rows of the documents ``drop`` marks (by their
        ``sizes``); a ``skipped`` document's rows (by index: the reason) go too, unless
        ``skip`` keeps a row for it. Returns the sizes of the documents not dropped."""
        raise NotImplementedError

    def render(self, doc, document: Row, mentions: Sequence[Row], info) -> tuple:
        """An opt-in output's rows of one document, made at the render stage (``doc``: the
        ``Document``; ``document``: its row; ``mentions``: its mention rows). Raises
        ``ValueError`` with the reason where the document cannot be written here: it fails."""
        raise NotImplementedError

    def complete(self, fs, root: str, run_id: str, streams: Sequence[str],
                 mine: Sequence[str] | None) -> None:
        """What a commit does for this output once the replaced rows are gone (``mine``: this
        run's part names, to add; None: rebuild from every part). Safe to repeat."""

    def completed(self, fs, root: str, streams: Sequence[str]) -> None:
        """What remains once the run is recorded complete (``complete`` is not repeated)."""

    def task_files(self, task: str) -> tuple[str, ...]:
        """The files it writes at the output's top for task ``task`` (names, from its root)."""
        return ()

    def column(self, stream: str) -> str:
        """Its index column for ``stream``."""
        return f"{self.name}/{stream}" if stream else self.name

    def paths(self, root: str, part: str, stream: str) -> list[str]:
        """Its final files of one part's stream."""
        return [f.path(root, self.name, part, stream) for f in self.files]

    def tmp_paths(self, folder: str, stream: str) -> list[str]:
        """The same files in a part's temporary folder."""
        tag = f"{self.name}-{stream}" if stream else self.name
        return [posixpath.join(folder, f"{tag}{f.suffix}") for f in self.files]

    def final_files(self, fs, root: str) -> Iterator[tuple[str, str]]:
        """``(part, path)`` of every committed file of this output."""
        for f in self.files:
            glob, regex = f.pattern(root, self.name)
            for path in fs.glob(glob):
                found = regex.match(path)
                if found:
                    yield found["part"], path


def kept_rows(sizes: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Per row (``sizes``: rows per document), whether its document keeps it."""
    return np.repeat(~drop, sizes)


class ParquetOutput(Output):
    """Rows in a Parquet file of ``schema`` (a second file: the same rows as CSV)."""

    schema: pa.Schema
    always = False  # an empty table is written when a commit leaves none (says the columns)

    def sink(self, paths: Sequence[str]) -> Sink:
        return _ParquetSink(paths[0], self.schema, paths[1] if len(paths) > 1 else None)

    def skip(self, row: Row, reason: str) -> Row | None:
        """A skipped document's row, or None where it has none."""
        return None

    def filter(self, fs, src, dst, sizes, drop, skipped) -> np.ndarray:
        table = read_table(fs, src[0])
        if skipped:  # rows in document order, a skipped document's replaced by its own
            bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            rows, kept, sizes = table.to_pylist(), [], sizes.copy()
            for doc in np.flatnonzero(~drop).tolist():
                these = rows[bounds[doc]:bounds[doc + 1]]
                if doc in skipped:
                    these = [r for r in (self.skip(Row(x), skipped[doc]) for x in these) if r]
                    sizes[doc] = len(these)
                kept += these
            table = pa.Table.from_pylist(kept, self.schema)
        else:
            table = table.filter(pa.array(kept_rows(sizes, drop)))
        if table.num_rows:
            write_table(fs, dst[0], table)
            if len(dst) > 1:
                with atomic_output(fs, dst[1]) as f:
                    pacsv.write_csv(table, f)
        return sizes[~drop]

    def complete(self, fs, root, run_id, streams, mine) -> None:
        if self.always and not any(True for _ in self.final_files(fs, root)):
            write_table(fs, self.paths(root, f"{run_id}-empty", "")[0], self.schema.empty_table())


class _ParquetSink(Sink):
    def __init__(self, path: str, schema: pa.Schema, csv: str | None) -> None:
        self._sink = ParquetSink(path, schema, csv=csv)

    def write(self, rows: Sequence) -> int:
        first, last = self._sink.write(rows)
        return last - first

    def close(self) -> None:
        self._sink.close()


class TextOutput(Output):
    """Rows as text records in one file, sized in bytes: dropped by byte ranges, never
    parsed (a record may hold line breaks)."""

    def encode(self, row: Any) -> bytes:
        """One row as its record, with its final newline."""
        raise NotImplementedError

    def sink(self, paths: Sequence[str]) -> Sink:
        return _TextSink(paths[0], self.encode)

    def filter(self, fs, src, dst, sizes, drop, skipped) -> np.ndarray:
        data, ends = fs.cat(src[0]), np.cumsum(sizes).tolist()
        sizes = sizes.copy()
        sizes[list(skipped)] = 0  # a skipped document's records go
        kept = b"".join(data[e - n:e] for n, e, d in zip(sizes.tolist(), ends, drop.tolist())
                        if not d)
        if kept:
            with atomic_output(fs, dst[0]) as f:
                f.write(kept)
        return sizes[~drop]


class _TextSink(Sink):
    def __init__(self, path: str, encode) -> None:
        self._file, self._encode = open_output(path, "wb"), encode

    def write(self, rows: Sequence) -> int:
        data = b"".join(self._encode(r) for r in rows)
        self._file.write(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
