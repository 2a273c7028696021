"""A document's own predictions -> its spans (decode) -> its flagged mentions (qualify) -> its
rows in every output and its counts (render); no join."""

import numpy as np
import pytest

from transforms.core.method import Method
from transforms.core.records import Document, Failure, Predictions, Work
from transforms.decode import Decoder
from transforms.qualify import Qualifier
from transforms.render import RenderDoFn, Renderer
from transforms.segment import pack
from transforms.core.spec import TaskSpec

TEXT = "dolor abdominal y fiebre"
WORDS = [(0, 5), (6, 15), (16, 17), (18, 24)]
SPECS = {
    "symptom": TaskSpec(name="symptom", kind="mtl", model="m", languages=("es",), tokenizer="tok",
                        heads={"es": ("s_es",)},
                        labels={"s_es": ("B-SYMPTOM", "I-SYMPTOM", "O")}, tokenizer_key="tok"),
    "multi": TaskSpec(name="multi", kind="mtl", model="m", languages=("es",), tokenizer="tok",
                      heads={"es": ("proc", "sym")}, tokenizer_key="tok",
                      labels={"proc": ("O", "B-PROCEDURE", "I-PROCEDURE"),
                              "sym": ("B-SYMPTOM", "I-SYMPTOM", "O")}),
}


def Aligner(specs, compat, outputs=()):
    """The three stages from predictions to rows, as the job chains them."""
    decode = Decoder(specs, Method(reference_compat=compat))
    qualify, render = Qualifier(specs), Renderer(specs, outputs)
    return lambda work: render(qualify(decode(work)))


def windows():
    starts = np.array([s for s, _ in WORDS])
    ends = np.array([e for _, e in WORDS])
    return pack([(np.zeros(6, np.int32), np.arange(1, 5, dtype=np.int32), starts, ends)])


def work(tasks, predictions, failures=()):
    doc = Document("k", "d", TEXT, "src.txt", lang="es", tasks=tasks, position=7)
    return Work(doc, {"tok": windows()}, predictions, tuple(failures))


def preds(heads, *label_columns):
    labels = np.array(label_columns, dtype=np.int16).T
    return Predictions(heads, labels, np.full(labels.shape, 0.5, np.float32))


def test_spans_rows_and_counts_of_one_document():
    rows = Aligner(SPECS, False)(work(("symptom",), {"symptom": preds(("s_es",), [0, 1, 2, 0])}))
    assert [(s["label"], s["text"]) for s in rows.spans] == [("SYMPTOM", "dolor abdominal"),
                                                             ("SYMPTOM", "fiebre")]
    assert rows.document["status"] == "annotated" and rows.document["n_spans"] == 2
    assert rows.key == "k" and rows.position == 7 and rows.errors == ()
    assert rows.counts == {"windows/symptom": 1, "tokens/real_symptom": 6,
                           "spans/symptom/SYMPTOM": 2, "documents/read": 1,
                           "documents/annotated": 1, "documents/lang_es": 1,
                           "documents/task_symptom": 1}


def test_every_head_is_decoded_with_its_own_labels_and_overlaps_are_kept():
    # proc: O B I O -> "abdominal y"... with its own order (O, B-, I-): ids 1, 2 are B, I
    # sym: B-SYMPTOM I-SYMPTOM O B-SYMPTOM with ids 0, 1, 2, 0
    rows = Aligner(SPECS, False)(work(("multi",), {"multi": preds(
        ("proc", "sym"), [0, 1, 2, 0], [0, 1, 2, 0])}))
    got = [(s["label"], s["start"], s["end"]) for s in rows.spans]
    assert got == [("SYMPTOM", 0, 15), ("PROCEDURE", 6, 17), ("SYMPTOM", 18, 24)]
    assert rows.counts["spans/multi/PROCEDURE"] == 1 and rows.counts["spans/multi/SYMPTOM"] == 2


def test_a_failed_task_fails_the_document_but_not_the_other_tasks():
    w = work(("symptom", "multi"), {"symptom": preds(("s_es",), [0, 1, 2, 2])},
             [Failure("k", "multi", "inference", "IndexError")])
    rows = Aligner(SPECS, False)(w)
    assert [s["task"] for s in rows.spans] == ["symptom"]  # the other task still delivers
    assert rows.document["status"] == "failed"
    assert rows.document["reason"] == "multi inference: IndexError"
    assert rows.errors == ({"doc_id": "d", "key": "k", "source": "src.txt", "task": "multi",
                            "stage": "inference", "error": "IndexError"},)
    assert rows.counts["documents/failed"] == 1


def test_unreadable_and_skipped_documents():
    bad = Work(Document("k", "d", None, "src", status="failed", reason="read: invalid UTF-8"))
    rows = Aligner(SPECS, False)(bad)
    assert rows.document["status"] == "failed" and rows.errors[0]["stage"] == "read"
    assert rows.errors[0]["error"] == "invalid UTF-8" and rows.document["n_chars"] == 0
    skipped = Work(Document("k", "d", "  ", "src", status="skipped", reason="empty text"))
    rows = Aligner(SPECS, False)(skipped)
    assert (rows.document["status"], rows.document["reason"]) == ("skipped", "empty text")
    assert rows.errors == () and rows.spans == ()


def test_reprs_hide_text():
    rows = Aligner(SPECS, False)(work(("symptom",), {"symptom": preds(("s_es",), [0, 1, 2, 0])}))
    assert "fiebre" not in repr(rows) and "dolor" not in repr(rows)


def test_the_dofn_yields_one_element_per_document():
    fn = RenderDoFn(SPECS)
    fn.setup()
    decoded = Decoder(SPECS, Method())(work(("symptom",), {"symptom": preds(("s_es",),
                                                                            [2, 2, 2, 2])}))
    out = list(fn.process(Qualifier(SPECS)(decoded)))
    assert len(out) == 1 and out[0].document["n_spans"] == 0


NEGATION = TaskSpec(name="negation", kind="hf", model="n", languages=("es",), tokenizer="tok",
                    heads={"es": (None,)},
                    tokenizer_key="tok", qualifies={"NSCO": "negated", "USCO": "uncertain"},
                    labels={None: ("O", "B-NEG", "I-NEG", "B-NSCO", "I-NSCO", "B-UNC", "I-UNC",
                                   "B-USCO", "I-USCO")})
# words: dolor abdominal y fiebre; symptoms "dolor abdominal" and "fiebre";
# an uncertainty scope over "dolor", a negation scope over "fiebre"
QUALIFIED = {"symptom": preds(("s_es",), [0, 1, 2, 0]), "negation": preds((None,), [7, 0, 0, 3])}


@pytest.mark.parametrize("compat", [False, True])
def test_a_qualifier_flags_the_mentions_of_its_document(compat):
    rows = Aligner({**SPECS, "negation": NEGATION}, compat)(
        work(("symptom", "negation"), QUALIFIED))
    flags = {(s["task"], s["label"], s["text"]): (s["negated"], s["negated_score"],
                                                  s["uncertain"], s["uncertain_score"])
             for s in rows.spans}
    assert flags == {
        ("symptom", "SYMPTOM", "dolor abdominal"): (False, None, True, 0.5),
        ("symptom", "SYMPTOM", "fiebre"): (True, 0.5, False, None),
        # the qualifier's own scopes are written under its name, unflagged
        ("negation", "USCO", "dolor"): (None, None, None, None),
        ("negation", "NSCO", "fiebre"): (None, None, None, None)}


def test_mentions_of_a_document_the_qualifier_did_not_run_on_have_null_flags():
    specs = {**SPECS, "negation": NEGATION}
    not_routed = Aligner(specs, False)(work(("symptom",), QUALIFIED))
    failed = Aligner(specs, False)(work(("symptom", "negation"), QUALIFIED,
                                        [Failure("k", "negation", "inference", "IndexError")]))
    for rows in (not_routed, failed):
        assert [s["task"] for s in rows.spans] == ["symptom", "symptom"]
        assert {(s["negated"], s["uncertain"]) for s in rows.spans} == {(None, None)}
    unqualified = Aligner(SPECS, False)(work(("symptom",), QUALIFIED))
    assert {s["negated"] for s in unqualified.spans} == {None}


def test_the_opt_in_outputs_carry_the_mentions_not_the_qualifiers_scopes():
    doc = Document("k", "4711", TEXT, "src.txt", lang="es", tasks=("symptom", "negation"))
    rows = Aligner({**SPECS, "negation": NEGATION}, False, ("cdm", "note_nlp"))(
        Work(doc, {"tok": windows()}, QUALIFIED))
    assert {s["task"] for s in rows.spans} == {"symptom", "negation"}
    (cdm,) = rows.extra["cdm"]
    assert [(a["concept_mention_string"], a["negation"], a["uncertainty"])
            for a in cdm["nlp_output"]["annotations"]] == [("dolor abdominal", "no", "yes"),
                                                            ("fiebre", "yes", "no")]
    assert [(r["note_id"], r["lexical_variant"], r["term_exists"])
            for r in rows.extra["note_nlp"]] == [(4711, "dolor abdominal", "N"),
                                                 (4711, "fiebre", "N")]
    unnumbered = Aligner(SPECS, False, ("cdm", "note_nlp"))(work(("symptom",), QUALIFIED))
    assert unnumbered.document["status"] == "failed" and unnumbered.extra["note_nlp"] == ()
    assert unnumbered.errors[0]["stage"] == "note_nlp"
    # the CDM document, rendered before NOTE_NLP failed it, says it failed too
    (cdm,) = unnumbered.extra["cdm"]
    assert cdm["nlp_output"]["processing_success"] is False
