"""``<out>/spans/spans-<part>.parquet``: one row per mention, with its qualifier flags
(``negated``, ``uncertain`` and their scope scores; null where no qualifier ran) and its code
(``code``, ``code_term``, ``code_system``, ``concept_id``, ``link_score``, ``link_method``,
``link_candidates``: null where no linker covers its label; a covered mention without a code
has an empty ``link_candidates``)."""

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
    ("code", pa.string()), ("code_term", pa.string()), ("code_system", pa.string()),
    ("concept_id", pa.int64()), ("link_score", pa.float32()), ("link_method", pa.string()),
    ("link_candidates", pa.list_(pa.string())),
])


class Spans(ParquetOutput):
    name, schema, always = "spans", SCHEMA, True
    files = (File(folder="spans", suffix=".parquet"),)

    def rows(self, doc):
        return {"": doc.spans}


OUTPUT = Spans()
