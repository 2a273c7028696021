"""A document's mentions -> its rows in every output, its state, dead letters and counts."""

from tests.fixtures.works import (NEGATION, QUALIFIED, SPECS, TEXT, annotate, preds, windows,
                                  work)
from transforms.core.method import Method
from transforms.core.records import Document, Failure, Work
from transforms.decode import Decoder
from transforms.qualify import Qualifier
from transforms.render import RenderDoFn


def test_spans_rows_and_counts_of_one_document():
    rows = annotate(SPECS, False)(work(("symptom",), {"symptom": preds(("s_es",), [0, 1, 2, 0])}))
    assert [(s["label"], s["text"]) for s in rows.spans] == [("SYMPTOM", "dolor abdominal"),
                                                             ("SYMPTOM", "fiebre")]
    assert rows.document["status"] == "annotated" and rows.document["n_spans"] == 2
    assert rows.key == "k" and rows.position == 7 and rows.errors == ()
    assert rows.counts == {"windows/symptom": 1, "tokens/real_symptom": 6,
                           "spans/symptom/SYMPTOM": 2, "documents/read": 1,
                           "documents/annotated": 1, "documents/lang_es": 1,
                           "documents/task_symptom": 1}


def test_a_failed_task_fails_the_document_but_not_the_other_tasks():
    w = work(("symptom", "multi"), {"symptom": preds(("s_es",), [0, 1, 2, 2])},
             [Failure("k", "multi", "inference", "IndexError")])
    rows = annotate(SPECS, False)(w)
    assert [s["task"] for s in rows.spans] == ["symptom"]  # the other task still delivers
    assert rows.document["status"] == "failed"
    assert rows.document["reason"] == "multi inference: IndexError"
    assert rows.errors == ({"doc_id": "d", "key": "k", "source": "src.txt", "task": "multi",
                            "stage": "inference", "error": "IndexError"},)
    assert rows.counts["documents/failed"] == 1


def test_unreadable_and_skipped_documents():
    bad = Work(Document("k", "d", None, "src", status="failed", reason="read: invalid UTF-8"))
    rows = annotate(SPECS, False)(bad)
    assert rows.document["status"] == "failed" and rows.errors[0]["stage"] == "read"
    assert rows.errors[0]["error"] == "invalid UTF-8" and rows.document["n_chars"] == 0
    skipped = Work(Document("k", "d", "  ", "src", status="skipped", reason="empty text"))
    rows = annotate(SPECS, False)(skipped)
    assert (rows.document["status"], rows.document["reason"]) == ("skipped", "empty text")
    assert rows.errors == () and rows.spans == ()


def test_reprs_hide_text():
    rows = annotate(SPECS, False)(work(("symptom",), {"symptom": preds(("s_es",), [0, 1, 2, 0])}))
    assert "fiebre" not in repr(rows) and "dolor" not in repr(rows)


def test_the_dofn_yields_one_element_per_document():
    fn = RenderDoFn(SPECS)
    fn.setup()
    decoded = Decoder(SPECS, Method())(work(("symptom",), {"symptom": preds(("s_es",),
                                                                            [2, 2, 2, 2])}))
    out = list(fn.process(Qualifier(SPECS)(decoded)))
    assert len(out) == 1 and out[0].document["n_spans"] == 0


def test_the_opt_in_outputs_carry_the_mentions_not_the_qualifiers_scopes():
    doc = Document("k", "4711", TEXT, "src.txt", lang="es", tasks=("symptom", "negation"))
    rows = annotate({**SPECS, "negation": NEGATION}, False, ("cdm", "note_nlp"))(
        Work(doc, {"tok": windows()}, QUALIFIED))
    assert {s["task"] for s in rows.spans} == {"symptom", "negation"}
    (cdm,) = rows.extra["cdm"]
    assert [(a["concept_mention_string"], a["negation"], a["uncertainty"])
            for a in cdm["nlp_output"]["annotations"]] == [("dolor abdominal", "no", "yes"),
                                                            ("fiebre", "yes", "no")]
    assert [(r["note_id"], r["lexical_variant"], r["term_exists"])
            for r in rows.extra["note_nlp"]] == [(4711, "dolor abdominal", "N"),
                                                 (4711, "fiebre", "N")]
    unnumbered = annotate(SPECS, False, ("cdm", "note_nlp"))(work(("symptom",), QUALIFIED))
    # left out of NOTE_NLP only: still annotated, its CDM document written, the reason kept
    assert unnumbered.document["status"] == "annotated" and unnumbered.extra["note_nlp"] == ()
    assert [(e["stage"], e["error"]) for e in unnumbered.errors] == [
        ("note_nlp", "no integer note id in `the document id`")]
    assert unnumbered.counts["documents/left_out_of_note_nlp"] == 1
    (cdm,) = unnumbered.extra["cdm"]
    assert cdm["nlp_output"]["processing_success"] is True
    assert len(cdm["nlp_output"]["annotations"]) == 2
