"""``<out>/documents/documents-<part>.parquet``: one row per input record, with its state
(``annotated``, ``skipped``, ``failed``) and the reason. A later record with an id seen before
keeps its row, ``skipped``, saying which record kept the id."""

from __future__ import annotations

import pyarrow as pa

from transforms.core.records import SKIPPED, Row
from transforms.outputs.base import File, ParquetOutput

SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
    ("lang_source", pa.string()), ("lang_score", pa.float32()), ("n_chars", pa.int64()),
    ("tasks", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("n_spans", pa.int64()), ("meta", pa.string()),
])


class Documents(ParquetOutput):
    name, schema, always = "documents", SCHEMA, True
    files = (File(folder="documents", suffix=".parquet"),)

    def rows(self, doc):
        return {"": (doc.document,)}

    def skip(self, row: Row, reason: str) -> Row:
        return Row(row, status=SKIPPED, n_spans=0, tasks="", reason=reason)


OUTPUT = Documents()
