"""Outputs on any fsspec filesystem (local, gs://, s3://, memory://), written atomically:

- ``<out>/<task>.tsv``: MultiClinAI format ``filename label start_span end_span text``;
- ``<out>/spans/spans-<run>-NNNNN-of-NNNNN.parquet``: one row per mention;
- ``<out>/documents/documents-<run>-NNNNN-of-NNNNN.parquet``: one row per input document;
- ``<out>/errors/errors-<run>-NNNNN-of-NNNNN.parquet``: one dead letter per failure (no text);
- ``<out>/_shards/``: a completion marker per input shard (see ``transforms.shards``).

Like Beam's file sinks: each bundle writes temporary Parquet shards under ``<out>/.tmp-<run>/``
and emits their names; only the names of committed bundles reach the finalize step. Finalize
first removes, from the Parquet files of earlier runs, the rows of the input shards this run
redid, then moves this run's files to their final names (``<run>`` is the run's id, so names
are deterministic per run and earlier runs' files stay), rebuilds each ``<task>.tsv`` from all
span files (written aside, then moved into place), and removes the temporary directory. Then
each shard done gets its marker. A crashed run leaves no half-written final file, and a rerun
redoes exactly the shards without a marker.
"""

from __future__ import annotations

import posixpath
import uuid
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.shards import Resume, shard_counts, write_marker
from transforms.storage import atomic_output, move, open_output

TSV_COLUMNS = ("filename", "label", "start_span", "end_span", "text")
TSV_HEADER = "\t".join(TSV_COLUMNS)
_NEEDS_QUOTES = frozenset('\t"\n\r')
_ROWS_PER_GROUP = 50_000

SPAN_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("task", pa.string()), ("label", pa.string()),
    ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
    ("score", pa.float32()), ("lang", pa.string()), ("source", pa.string()),
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


class _WriteShards(beam.DoFn):
    """Rows -> one temporary Parquet file per bundle; yields ``(kind, url)``."""

    def __init__(self, tmp: str, kind: str) -> None:
        self._tmp, self._kind = tmp, kind
        self._shard: _ParquetShard | None = None

    def start_bundle(self) -> None:
        self._shard = None

    def process(self, row: dict) -> None:
        if self._shard is None:
            path = posixpath.join(self._tmp, self._kind, f"{uuid.uuid4().hex}.part")
            self._shard = _ParquetShard(path, SCHEMAS[self._kind])
        self._shard.write(row)

    def finish_bundle(self) -> Iterator:
        if self._shard is not None:
            self._shard.close()
            yield GlobalWindows.windowed_value((self._kind, self._shard.path))
        self._shard = None


def _drop_sources(fs, path: str, redone: pa.Array) -> None:
    """Remove the rows of ``redone`` input shards from one Parquet file (or the file)."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        if "source" not in pf.schema_arrow.names:
            raise ValueError(f"{path}: written by an older version (no `source` column): "
                             "annotate into a new --output, or remove this file")
        sources = pf.read(columns=["source"])["source"]
    if not pc.any(pc.is_in(sources, value_set=redone)).as_py():
        return
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    kept = table.filter(pc.invert(pc.is_in(table["source"], value_set=redone)))
    if kept.num_rows:
        _write_table(fs, path, kept)
    else:
        fs.rm(path)


def _write_table(fs, path: str, table: pa.Table) -> None:
    """Write a Parquet file atomically."""
    with atomic_output(fs, path) as f:
        pq.write_table(table, f)


def write_tsv(fs, root: str, tasks: Iterable[str]) -> None:
    """``<task>.tsv`` for each task from all span files (each written atomically)."""
    with ExitStack() as stack:
        files = {t: stack.enter_context(atomic_output(fs, posixpath.join(root, f"{t}.tsv")))
                 for t in tasks}
        for f in files.values():
            f.write((TSV_HEADER + "\n").encode("utf-8"))
        columns = ["doc_id", "task", "label", "start", "end", "text"]
        for part in sorted(fs.glob(posixpath.join(root, "spans", "*.parquet"))):
            with fs.open(part, "rb") as src:
                for batch in pq.ParquetFile(src).iter_batches(batch_size=65536, columns=columns):
                    for row in batch.to_pylist():
                        if row["task"] in files:
                            files[row["task"]].write((tsv_line(row) + "\n").encode("utf-8"))


def finalize(parts: Sequence[tuple[str, str]], out: str, tasks: Iterable[str], tmp: str,
             run_id: str, redone: Sequence[str]) -> int:
    """Commit this run's files over earlier runs' (see the module docstring); safe to retry.

    Returns the number of this run's files.
    """
    fs, root = fsspec.core.url_to_fs(out)
    redone_array = pa.array(sorted(set(redone)), pa.string())
    by_kind: dict[str, list[str]] = {}
    for kind, url in parts:
        by_kind.setdefault(kind, []).append(fsspec.core.url_to_fs(url)[1])
    for kind, schema in SCHEMAS.items():
        target = posixpath.join(root, kind)
        fs.makedirs(target, exist_ok=True)
        mine = f"{kind}-{run_id}-"
        for old in fs.glob(posixpath.join(target, "*.parquet")):
            if len(redone_array) and not posixpath.basename(old).startswith(mine):
                _drop_sources(fs, old, redone_array)
        new = sorted(by_kind.get(kind, []))
        for i, part in enumerate(new):
            final = posixpath.join(target, f"{mine}{i:05d}-of-{len(new):05d}.parquet")
            if fs.exists(part) or not fs.exists(final):  # else moved by an earlier attempt
                move(fs, part, final)
        if not fs.glob(posixpath.join(target, "*.parquet")):
            # An empty table still says what its columns are.
            _write_table(fs, posixpath.join(target, f"{mine}00000-of-00001.parquet"),
                         schema.empty_table())
    tasks = list(tasks)
    if redone or not all(fs.exists(posixpath.join(root, f"{t}.tsv")) for t in tasks):
        write_tsv(fs, root, tasks)
    tmp_root = fsspec.core.url_to_fs(tmp)[1]
    if fs.exists(tmp_root):
        fs.rm(tmp_root, recursive=True)
    return len(parts)


class _WriteMarker(beam.DoFn):
    """(url, {shard, documents}) -> the shard's marker, once the outputs are committed."""

    def __init__(self, resume: Resume, run_id: str) -> None:
        self._resume, self._run_id = resume, run_id

    def process(self, element, committed: int) -> Iterator[str]:
        _, grouped = element
        counts = shard_counts(grouped["documents"])
        for shard in grouped["shard"]:
            Metrics.counter("shards", "completed").inc()
            yield write_marker(shard, counts, self._resume, self._run_id,
                               datetime.now(timezone.utc).isoformat())


class WriteOutputs(beam.PTransform):
    """Writes span rows (per task TSV and Parquet), document rows and dead letters (Parquet),
    then marks the shards of this run complete."""

    def __init__(self, tasks: Iterable[str], resume: Resume, run_id: str) -> None:
        super().__init__()
        self._out = resume.output.rstrip("/")
        self._tasks = list(tasks)
        self._resume, self._run_id = resume, run_id
        self._tmp = f"{self._out}/.tmp-{run_id}-{uuid.uuid4().hex[:8]}"

    def expand(self, pcolls):
        spans, documents, errors, shards = pcolls
        parts = (
            spans | "SpanShards" >> beam.ParDo(_WriteShards(self._tmp, "spans")),
            documents | "DocumentShards" >> beam.ParDo(_WriteShards(self._tmp, "documents")),
            errors | "ErrorShards" >> beam.ParDo(_WriteShards(self._tmp, "errors")),
        )
        redone = shards | "ShardUrls" >> beam.Map(lambda s: s.url)
        committed = (
            parts
            | "AllParts" >> beam.Flatten()
            | "PartList" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(finalize, self._out, self._tasks, self._tmp, self._run_id,
                                     beam.pvalue.AsList(redone))
        )
        return (
            {"shard": shards | "KeyShards" >> beam.WithKeys(lambda s: s.url),
             "documents": documents | "KeyBySource" >> beam.WithKeys(lambda d: d["source"])}
            | "ByShard" >> beam.CoGroupByKey()
            | "MarkComplete" >> beam.ParDo(_WriteMarker(self._resume, self._run_id),
                                           beam.pvalue.AsSingleton(committed))
        )
