"""Outputs, through Beam's file sinks (temporary files, then an atomic rename):

- ``<out>/<task>.tsv``: MultiClinAI format ``filename label start_span end_span text``;
- ``<out>/spans/*.parquet``: one row per mention;
- ``<out>/documents/*.parquet``: one row per input document with its final state.
"""

from __future__ import annotations

from typing import Iterable

import apache_beam as beam
import pyarrow as pa

TSV_COLUMNS = ("filename", "label", "start_span", "end_span", "text")
TSV_HEADER = "\t".join(TSV_COLUMNS)
_NEEDS_QUOTES = frozenset('\t"\n\r')

SPAN_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("task", pa.string()), ("label", pa.string()),
    ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
    ("score", pa.float32()), ("lang", pa.string()),
])
DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
    ("lang_source", pa.string()), ("lang_score", pa.float32()), ("n_chars", pa.int64()), ("tasks", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("n_spans", pa.int64()),
])


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


class WriteOutputs(beam.PTransform):
    """Writes span rows (per task TSV and Parquet) and document rows (Parquet)."""

    def __init__(self, output: str, tasks: Iterable[str]) -> None:
        super().__init__()
        self._out = output.rstrip("/")
        self._tasks = list(tasks)

    def expand(self, pcolls):
        spans, documents = pcolls
        for task in self._tasks:
            (
                spans
                | f"Select_{task}" >> beam.Filter(lambda r, t=task: r["task"] == t)
                | f"Tsv_{task}" >> beam.Map(tsv_line)
                | f"WriteTsv_{task}" >> beam.io.WriteToText(
                    f"{self._out}/{task}", file_name_suffix=".tsv", num_shards=1,
                    shard_name_template="", header=TSV_HEADER)
            )
        spans | "WriteSpans" >> beam.io.WriteToParquet(
            f"{self._out}/spans/spans", SPAN_SCHEMA, file_name_suffix=".parquet")
        return documents | "WriteDocuments" >> beam.io.WriteToParquet(
            f"{self._out}/documents/documents", DOCUMENT_SCHEMA, file_name_suffix=".parquet")
