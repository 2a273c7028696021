"""``<out>/note_nlp/parquet/note_nlp-<part>.parquet`` (``--write note_nlp``): OMOP ``NOTE_NLP``
rows, one per mention (``transforms.formats.omop``), and the same rows in
``<out>/note_nlp/csv/note_nlp-<part>.csv`` (with a header) for database loaders. A document
with mentions and no integer note id is left out of it (its other outputs are written), with
the reason in ``errors/``."""

from __future__ import annotations

from transforms.formats.omop import NOTE_NLP_SCHEMA, note_nlp_rows
from transforms.outputs.base import File, ParquetOutput


class NoteNlp(ParquetOutput):
    name, schema = "note_nlp", NOTE_NLP_SCHEMA
    fix = ("each document needs its integer OMOP note id: in --note_id_field, or as its "
           "document id")
    files = (File(folder="note_nlp/parquet", suffix=".parquet"),
             File(folder="note_nlp/csv", suffix=".csv"))

    def rows(self, doc):
        return {"": doc.extra.get(self.name, ())}

    def render(self, doc, document, mentions, info) -> tuple:
        return tuple(note_nlp_rows(document, doc.text, mentions, info))


OUTPUT = NoteNlp()
