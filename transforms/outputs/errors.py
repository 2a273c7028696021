"""``<out>/errors/errors-<part>.parquet``: one dead letter per failure (the stage, the error's
class; never the text)."""

from __future__ import annotations

import pyarrow as pa

from transforms.outputs.base import File, ParquetOutput

SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("key", pa.string()), ("source", pa.string()),
    ("task", pa.string()), ("stage", pa.string()), ("error", pa.string()),
])


class Errors(ParquetOutput):
    name, schema, always = "errors", SCHEMA, True
    files = (File(folder="errors", suffix=".parquet"),)

    def rows(self, doc):
        return {"": doc.errors}


OUTPUT = Errors()
