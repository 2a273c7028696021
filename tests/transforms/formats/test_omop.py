"""OMOP NOTE_NLP rows: the v5.4 columns and types, stable ids, bounded snippets, term_exists."""

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from tests.conftest import SPACCC, read_text
from transforms.formats.cdm import RunInfo
from transforms.formats.omop import (NOTE_NLP_SCHEMA, NoteIdError, note_id, note_nlp_id,
                                     note_nlp_rows, snippet)

TEXT = read_text(sorted((SPACCC / "txt").glob("*.txt"))[1])
# OMOP CDM v5.4 DDL, NOTE_NLP: column -> type (integers as its BigQuery DDL's INT64)
DDL = {"note_nlp_id": "integer", "note_id": "integer", "section_concept_id": "integer",
       "snippet": "varchar(250)", "offset": "varchar(50)", "lexical_variant": "varchar(250)",
       "note_nlp_concept_id": "integer", "note_nlp_source_concept_id": "integer",
       "nlp_system": "varchar(250)", "nlp_date": "date", "nlp_datetime": "datetime",
       "term_exists": "varchar(1)", "term_temporal": "varchar(50)",
       "term_modifiers": "varchar(2000)"}
ARROW = {"integer": pa.int64(), "date": pa.date32(), "datetime": pa.timestamp("ms")}


def test_the_columns_and_types_are_the_v54_ddls():
    assert NOTE_NLP_SCHEMA.names == list(DDL)
    for name, kind in DDL.items():
        assert NOTE_NLP_SCHEMA.field(name).type == ARROW.get(kind, pa.string()), name


def doc(doc_id="123", meta=None):
    return {"doc_id": doc_id, "lang": "es", "status": "annotated", "tasks": "symptom",
            "meta": json.dumps(meta) if meta else None}


def test_the_note_id_is_an_integer_from_the_chosen_field():
    assert note_id(doc("123"), None) == 123
    assert note_id(doc("x", {"record_metadata": {"record_id": 77}}), "record_id") == 77
    assert note_id(doc("x", {"note": " 9 "}), "note") == 9
    for bad, field in ((doc("abc"), None), (doc("x", {"note": "n-1"}), "note"),
                       (doc("x", {}), "note"), (doc("x", {"note": True}), "note")):
        with pytest.raises(NoteIdError, match="no integer note id"):
            note_id(bad, field)


def test_ids_are_stable_and_distinct():
    assert note_nlp_id(1, "symptom", "SYMPTOM", 3, 9) == note_nlp_id(1, "symptom", "SYMPTOM", 3, 9)
    ids = {note_nlp_id(n, t, label, s, s + 4) for n in range(50) for t in ("a", "b")
           for label in ("DISEASE", "SYMPTOM") for s in range(100)}
    # two heads' mentions at the same offsets (a multi-label task) are two rows
    assert len(ids) == 50 * 2 * 2 * 100 and all(0 < i < 1 << 63 for i in ids)


@pytest.mark.parametrize("start, end", [(0, 5), (40, 48), (len(TEXT) - 6, len(TEXT))])
def test_a_snippet_is_bounded_and_holds_the_mention(start, end):
    s = snippet(TEXT, start, end, 60)
    assert len(s) == 60 and TEXT[start:end] in s


def test_rows_of_a_documents_mentions():
    started = datetime(2026, 11, 23, 17, 0, 5, tzinfo=timezone.utc)
    info = RunInfo(version="1.0", started=started, models={"symptom": "rev1"},
                   locations={"symptom": "m"}, snippet_chars=80)

    def span(task, start, end, negated=None, uncertain=None):
        return {"task": task, "label": "SYMPTOM", "start": start, "end": end,
                "text": TEXT[start:end], "negated": negated, "uncertain": uncertain}

    rows = note_nlp_rows(doc("123"), TEXT, [
        span("symptom", 10, 20, negated=True, uncertain=False), span("symptom", 30, 35),
        span("symptom", 50, 60, negated=False, uncertain=True)], info)
    pa.Table.from_pylist(rows, NOTE_NLP_SCHEMA)  # the types hold
    assert [r["term_exists"] for r in rows] == ["N", "Y", "N"]
    assert [r["term_modifiers"] for r in rows] == [
        "task=symptom;label=SYMPTOM;negated=yes;uncertain=no", "task=symptom;label=SYMPTOM",
        "task=symptom;label=SYMPTOM;negated=no;uncertain=yes"]
    first = rows[0]
    assert (first["note_id"], first["offset"], first["lexical_variant"]) == (123, "10",
                                                                            TEXT[10:20])
    assert first["nlp_system"] == "clinical-ner-pipeline 1.0; symptom m@rev1"
    assert first["nlp_date"] == started.date() and first["note_nlp_concept_id"] == 0
    assert first["nlp_datetime"] == datetime(2026, 11, 23, 17, 0, 5)
    assert TEXT[10:20] in first["snippet"] and len(first["snippet"]) <= 80
    assert note_nlp_rows(doc("not-a-number"), TEXT, [], info) == []
    with pytest.raises(NoteIdError):
        note_nlp_rows(doc("not-a-number"), TEXT, [span("symptom", 0, 4)], info)
