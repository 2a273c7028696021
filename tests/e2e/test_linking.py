"""The probe's quick start with a linker: its mentions coded against a terminology made of
real clinical strings (the gold mentions of the 650 SPACCC cases the probe was trained on),
as a TSV and as an OMOP vocabulary, into every output."""

import csv
import json
import shutil

import pandas as pd
import pytest

from tests.conftest import SHARED, SPACCC, run_pipeline
from transforms.core.link import normalize

pytestmark = pytest.mark.e2e
PROBE = SHARED / "models" / "probe-es"
HELDOUT = (PROBE / "heldout.txt").read_text().split()


@pytest.fixture(scope="module")
def terms(tmp_path_factory):
    """``{normalised form: (code, concept_id)}`` of the training cases' gold strings, written
    as a TSV and as an OMOP vocabulary (codes by form, concept ids from 1000)."""
    folder = tmp_path_factory.mktemp("terminology")
    held, forms, rows = set(HELDOUT), {}, []
    for label in ("symptom", "procedure"):
        with open(SPACCC / f"gold_{label}.tsv", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter="\t"):
                form = normalize(r["text"])
                if r["filename"] in held or not form or form in forms:
                    continue
                forms[form] = (f"{label[:3].upper()}{len(forms):05d}", 1000 + len(forms))
                rows.append((*forms[form], " ".join(r["text"].split()), label))
    (folder / "terms.tsv").write_text("code\tterm\n" + "".join(
        f"{code}\t{text}\n" for code, _, text, _ in rows), encoding="utf-8")
    omop = folder / "omop"
    omop.mkdir()
    (omop / "CONCEPT.csv").write_text(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\t"
        "standard_concept\tconcept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
        + "".join(f"{cid}\t{text}\t{'Condition' if lab == 'symptom' else 'Procedure'}\tSNOMED"
                  f"\tClinical Finding\tS\t{code}\t20020131\t20991231\t\n"
                  for code, cid, text, lab in rows), encoding="utf-8")
    return folder, forms


def task_file(folder, terminology, extra=""):
    path = folder / f"tasks-{terminology.replace('/', '')}.yaml"
    path.write_text(
        "tasks:\n"
        f"  symptom:\n    kind: mtl\n    model: {PROBE / 'probe-es.pt'}\n"
        f"    encoder: {PROBE}\n    heads: {{es: symptom_es_ner}}\n"
        f"  procedure:\n    kind: hf\n    model: {PROBE / 'procedure'}\n    languages: [es]\n"
        f"linkers:\n  spaccc:\n    labels: [SYMPTOM, PROCEDURE]\n"
        f"    terminology: {terminology}\n{extra}", encoding="utf-8")
    return path


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
    assert set(others.link_method.dropna()) == {"ngram"} and others.code.notna().mean() > 0.9
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
