"""Outputs on any fsspec filesystem (local, gs://, s3://, memory://), written atomically:

- ``<out>/<task>.tsv``: MultiClinAI format ``filename label start_span end_span text``;
- ``<out>/spans/spans-NNNNN-of-NNNNN.parquet``: one row per mention;
- ``<out>/documents/documents-NNNNN-of-NNNNN.parquet``: one row per input document;
- ``<out>/errors/errors-NNNNN-of-NNNNN.parquet``: one dead letter per failure (no text).

Like Beam's file sinks: each bundle writes temporary shards under ``<out>/.tmp-<run>/`` and
emits their names; only the names of committed bundles reach the finalize step, which moves
Parquet shards to their final names and concatenates TSV shards into ``<task>.tsv`` (written
aside, then moved into place), then removes the temporary directory. A crashed run leaves no
half-written final file.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from transforms.storage import move, open_output

TSV_COLUMNS = ("filename", "label", "start_span", "end_span", "text")
TSV_HEADER = "\t".join(TSV_COLUMNS)
_NEEDS_QUOTES = frozenset('\t"\n\r')
_ROWS_PER_GROUP = 50_000

SPAN_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("task", pa.string()), ("label", pa.string()),
    ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
    ("score", pa.float32()), ("lang", pa.string()),
])
DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
    ("lang_source", pa.string()), ("lang_score", pa.float32()), ("n_chars", pa.int64()),
    ("tasks", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("n_spans", pa.int64()), ("meta", pa.string()),
])


ERROR_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("key", pa.string()), ("source", pa.string()),
    ("task", pa.string()), ("stage", pa.string()), ("error", pa.string()),
])
SCHEMAS = {"spans": SPAN_SCHEMA, "documents": DOCUMENT_SCHEMA, "errors": ERROR_SCHEMA}


def tsv_field(value: object) -> str:
    """A TSV field, CSV-quoted when it holds a tab, a quote or a line break (``\\r`` too)."""
    s = str(value)
    if _NEEDS_QUOTES.isdisjoint(s):
        return s
    return '"' + s.replace('"', '""') + '"'


def tsv_line(row: dict) -> str:
    """A span row as one MultiClinAI TSV record (without the final newline)."""
    return "\t".join(
        tsv_field(v) for v in (row["doc_id"], row["label"], row["start"], row["end"], row["text"])
    )


class _ParquetShard:
    """Rows appended to one Parquet file in row groups of bounded size."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self._file = open_output(path, "wb")
        self._writer = pq.ParquetWriter(self._file, schema)
        self._schema = schema
        self._rows: list[dict] = []

    def write(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= _ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._file.close()


class _TsvShard:
    """TSV records appended to one file (no header: finalize adds it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open_output(path, "wb")

    def write(self, row: dict) -> None:
        self._file.write((tsv_line(row) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._file.close()


class _WriteShards(beam.DoFn):
    """Rows -> one temporary shard per (bundle, group); yields ``(kind, group, url)``."""

    def __init__(self, tmp: str, kind: str) -> None:
        self._tmp, self._kind = tmp, kind
        self._open: dict[str, _ParquetShard | _TsvShard] = {}

    def start_bundle(self) -> None:
        self._open = {}

    def process(self, row: dict) -> None:
        group = row["task"] if self._kind == "tsv" else self._kind
        shard = self._open.get(group)
        if shard is None:
            path = posixpath.join(self._tmp, self._kind, group, f"{uuid.uuid4().hex}.part")
            shard = (_TsvShard(path) if self._kind == "tsv"
                     else _ParquetShard(path, SCHEMAS[self._kind]))
            self._open[group] = shard
        shard.write(row)

    def finish_bundle(self) -> Iterator:
        for group, shard in self._open.items():
            shard.close()
            yield GlobalWindows.windowed_value((self._kind, group, shard.path))
        self._open = {}


def finalize(shards: Sequence[tuple[str, str, str]], out: str, tasks: Iterable[str],
             tmp: str) -> None:
    """Move committed shards into their final names; remove the temporary directory."""
    fs, root = fsspec.core.url_to_fs(out)
    by_kind: dict[tuple[str, str], list[str]] = {}
    for kind, group, url in shards:
        by_kind.setdefault((kind, group), []).append(fsspec.core.url_to_fs(url)[1])
    for task in tasks:
        final = posixpath.join(root, f"{task}.tsv")
        fs.makedirs(root, exist_ok=True)
        with fs.open(final + ".inprogress", "wb") as dst:
            dst.write((TSV_HEADER + "\n").encode("utf-8"))
            for part in sorted(by_kind.get(("tsv", task), [])):
                with fs.open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
        move(fs, final + ".inprogress", final)
    tmp_root = fsspec.core.url_to_fs(tmp)[1]
    for kind, schema in SCHEMAS.items():
        parts = sorted(by_kind.get((kind, kind), []))
        target = posixpath.join(root, kind)
        fs.makedirs(target, exist_ok=True)
        for old in fs.glob(posixpath.join(target, f"{kind}-*-of-*.parquet")):
            fs.rm(old)
        if not parts:  # an empty table still says what its columns are
            parts = [posixpath.join(tmp_root, f"{kind}.empty")]
            fs.makedirs(tmp_root, exist_ok=True)
            with fs.open(parts[0], "wb") as f:
                pq.write_table(schema.empty_table(), f)
        for i, part in enumerate(parts):
            move(fs, part, posixpath.join(target, f"{kind}-{i:05d}-of-{len(parts):05d}.parquet"))
    if fs.exists(tmp_root):
        fs.rm(tmp_root, recursive=True)


class WriteOutputs(beam.PTransform):
    """Writes span rows (per task TSV and Parquet), document rows and dead letters (Parquet)."""

    def __init__(self, output: str, tasks: Iterable[str]) -> None:
        super().__init__()
        self._out = output.rstrip("/")
        self._tasks = list(tasks)
        self._tmp = f"{self._out}/.tmp-{uuid.uuid4().hex[:12]}"

    def expand(self, pcolls):
        spans, documents, errors = pcolls
        shards = (
            spans | "TsvShards" >> beam.ParDo(_WriteShards(self._tmp, "tsv")),
            spans | "SpanShards" >> beam.ParDo(_WriteShards(self._tmp, "spans")),
            documents | "DocumentShards" >> beam.ParDo(_WriteShards(self._tmp, "documents")),
            errors | "ErrorShards" >> beam.ParDo(_WriteShards(self._tmp, "errors")),
        )
        return (
            shards
            | "AllShards" >> beam.Flatten()
            | "ShardList" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(finalize, self._out, self._tasks, self._tmp)
        )
