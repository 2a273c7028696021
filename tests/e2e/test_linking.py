"""The probe's quick start with a linker: its mentions coded against a terminology made of
real clinical strings (the gold mentions of the 650 SPACCC cases the probe was trained on),
as a TSV and as an OMOP vocabulary, into every output."""

import json
import shutil

import pandas as pd
import pytest

from tests.conftest import SPACCC, run_pipeline
from tests.fixtures.terminology import HELDOUT, task_file
from transforms.core.link import NGRAM_MIN_SCORE, normalize

pytestmark = pytest.mark.e2e


def test_every_mention_that_is_a_term_gets_that_terms_code(terms, tmp_path):
    folder, forms = terms
    src = tmp_path / "in"
    src.mkdir()
    for doc_id in HELDOUT:
        shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", src / f"{doc_id}.txt")
    out = tmp_path / "out"
    run_pipeline("--input", str(src), "--output", str(out), "--tasks",
                 str(task_file(folder, "terms.tsv", "    system: SPACCC\n")), "--language", "es")
    spans = pd.read_parquet(out / "spans")
    assert len(spans) > 2000 and spans.link_candidates.notna().all()  # every label covered
    known = spans[[normalize(t) in forms for t in spans.text]]
    assert len(known) > 500
    assert (known.code == [forms[normalize(t)][0] for t in known.text]).all()
    assert set(known.link_method) == {"exact"} and (known.link_score == 1).all()
    assert set(known.code_system) == {"SPACCC"}
    others = spans[[normalize(t) not in forms for t in spans.text]]
    assert set(others.link_method.dropna()) == {"ngram"}
    # by default only near matches code (NGRAM_MIN_SCORE); the others stay uncoded
    assert (others.link_score.dropna() >= NGRAM_MIN_SCORE).all()
    assert 0 < others.code.notna().sum() < len(others) / 4
    assert (others[others.code.isna()].link_candidates.map(len) == 0).all()
    for task in ("symptom", "procedure"):
        codes = pd.read_csv(out / f"{task}_codes.tsv", sep="\t", keep_default_na=False)
        mine = spans[spans.task == task]
        assert list(codes.columns) == ["filename", "label", "start_span", "end_span", "text",
                                       "code"]
        assert sorted(zip(codes.filename, codes.start_span, codes.code)) == sorted(
            zip(mine.doc_id, mine.start, mine.code.fillna("NO_CODE")))
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert sum(v for k, v in counts.items() if k.startswith("links/")) == len(spans)
    from pipeline.report import write_report

    page = open(write_report(str(out)), encoding="utf-8").read()
    coded = spans[spans.label == "SYMPTOM"].code.notna()
    assert f"SYMPTOM: {coded.mean():.1%} coded ({coded.sum():,} of {len(coded):,})" in page
    symptoms = spans[(spans.label == "SYMPTOM") & spans.code.notna()]
    exact = int((symptoms.link_method == "exact").sum())
    assert (f"<tr><td>exact</td><td class=\"num\">{exact:,}</td><td class=\"num\">"
            f"{exact / len(symptoms):.1%}</td></tr>") in page
    assert "spaccc: ngram 0.9." in page  # the one method this linker codes with


def test_min_score_0_codes_every_mention_as_near_as_it_finds(terms, tmp_path):
    folder, forms = terms
    src = tmp_path / "in"
    src.mkdir()
    for doc_id in HELDOUT[:10]:
        shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", src / f"{doc_id}.txt")
    out = tmp_path / "out"
    run_pipeline("--input", str(src), "--output", str(out), "--tasks",
                 str(task_file(folder, "terms.tsv", "    min_score: 0\n")), "--language", "es")
    spans = pd.read_parquet(out / "spans")
    assert spans.code.notna().mean() > 0.9 and spans.link_score.min() < NGRAM_MIN_SCORE


def test_an_omop_vocabulary_codes_note_nlp_and_the_cdm_with_its_concepts(terms, tmp_path):
    folder, forms = terms
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.jsonl").write_text("".join(json.dumps({
        "id": doc_id, "note_id": 7000 + n,
        "text": (SPACCC / "txt" / f"{doc_id}.txt").read_text(encoding="utf-8")}) + "\n"
        for n, doc_id in enumerate(HELDOUT[:6])), encoding="utf-8")
    out = tmp_path / "out"
    run_pipeline("--input", str(notes), "--output", str(out), "--tasks",
                 str(task_file(folder, "omop", "    filters: {vocabulary_id: [SNOMED]}\n")),
                 "--language", "es", "--write", "cdm,note_nlp", "--note_id_field", "note_id")
    spans = pd.read_parquet(out / "spans")
    exact = spans[spans.link_method == "exact"]
    assert len(exact) > 20
    assert (exact.concept_id == [forms[normalize(t)][1] for t in exact.text]).all()
    assert set(spans.code_system.dropna()) == {"SNOMED"}
    note = pd.read_parquet(out / "note_nlp" / "parquet")
    by_variant = dict(zip(zip(note.note_id, note.offset.astype(int)), note.note_nlp_concept_id))
    ids = {doc_id: 7000 + n for n, doc_id in enumerate(HELDOUT[:6])}
    coded = spans[spans.concept_id.notna()]
    assert all(by_variant[(ids[d], s)] == c for d, s, c in zip(coded.doc_id, coded.start,
                                                               coded.concept_id))
    annotations = [a for line in (out / "cdm").glob("*.jsonl")
                   for doc in line.read_text(encoding="utf-8").splitlines()
                   for a in json.loads(doc)["nlp_output"]["annotations"]]
    coded_cdm = [a for a in annotations if a["controlled_vocabulary_concept_identifier"]]
    assert len(coded_cdm) == len(coded)
    assert {a["controlled_vocabulary_namespace"] for a in coded_cdm} == {"SNOMED CT"}
    assert {a["nel_component_type"] for a in coded_cdm} == {"lexical similarity"}
    assert sorted(a["concept_confidence"] for a in coded_cdm) == pytest.approx(
        sorted(coded.link_score), abs=1e-6)
    assert all(a["concept_confidence"] is None for a in annotations
               if not a["controlled_vocabulary_concept_identifier"])
