"""``<out>/spans/spans-<part>.parquet``: one row per mention, with its qualifier flags
(``negated``, ``uncertain`` and their scope scores; null where no qualifier ran)."""

from __future__ import annotations

import pyarrow as pa

from transforms.core.qualify import FLAGS
from transforms.outputs.base import File, ParquetOutput

SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("task", pa.string()), ("label", pa.string()),
    ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
    ("score", pa.float32()), ("lang", pa.string()), ("source", pa.string()),
    *((column, kind) for flag in FLAGS
      for column, kind in ((flag, pa.bool_()), (f"{flag}_score", pa.float32()))),
])


class Spans(ParquetOutput):
    name, schema, always = "spans", SCHEMA, True
    files = (File(folder="spans", suffix=".parquet"),)

    def rows(self, doc):
        return {"": doc.spans}


OUTPUT = Spans()
