"""DT4H CDM documents in, CDM NlpResponse and OMOP NOTE_NLP out, through the real job."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED, TOKENIZER, read_text, run_pipeline, spaccc_files
from transforms.formats.cdm import problems
from transforms.formats.omop import NOTE_NLP_SCHEMA

PROBE = SHARED / "models" / "probe-es"


def metadata(i: int, text: str) -> dict:
    return {"clinical_site_id": "HOSP-7", "patient_id": f"P{i:04d}", "admission_id": f"A{i}",
            "record_id": 5000 + i, "deidentified": "yes",
            "deidentification_pipeline_name": "anonymizer",
            "deidentification_pipeline_version": "3.2", "admission_date": "2024-02-0" + str(i),
            "admission_type": "inpatient", "record_type": "discharge summary",
            "record_format": "txt", "report_section": "history", "report_language": "es",
            "record_character_encoding": "UTF-8", "text": text}


@pytest.fixture(scope="module")
def cdm_input(tmp_path_factory):
    """Eight real SPACCC cases as CDM documents (one with its text in a .txt beside it, one
    missing a mandatory field, one in Italian, one without text), and a task file: the probe's two tasks and a random-weight
    negation tagger qualifying them."""
    from tests.fixtures.models import build_hf

    d = tmp_path_factory.mktemp("cdm")
    (d / "in").mkdir()
    records = {}
    for i, f in enumerate(spaccc_files(8)):
        md = metadata(i, read_text(f) if i != 7 else " \n\t ")  # 7: a note with no text
        if i == 6:  # in a language no task takes
            md["report_language"] = "it"
        if i == 1:  # its text is the .txt file beside it
            (d / "in" / f"note{i}.txt").write_text(md["text"], encoding="utf-8")
            md["text"] = ""
        if i == 4:
            del md["patient_id"]
        records[md["record_id"]] = md
        (d / "in" / f"note{i}.json").write_text(json.dumps({"nlp_output": {
            "record_metadata": md}}, ensure_ascii=False, indent=2), encoding="utf-8")
    tagger = build_hf(d / "negation", TOKENIZER, entity=("NEG", "NSCO", "UNC", "USCO"), seed=3)
    (d / "tasks.yaml").write_text(
        "tasks:\n"
        f"  symptom:\n    kind: mtl\n    model: {PROBE / 'probe-es.pt'}\n"
        f"    encoder: {PROBE}\n    heads: {{es: symptom_es_ner}}\n"
        f"  procedure:\n    kind: hf\n    model: {PROBE / 'procedure'}\n    languages: [es]\n"
        f"  negation:\n    kind: hf\n    model: {tagger}\n    languages: [es]\n"
        "    qualifies: {NSCO: negated, USCO: uncertain}\n")
    return d, records


def annotate(d, out, *extra):
    run_pipeline("--input", str(d / "in"), "--output", str(out), "--tasks",
                 str(d / "tasks.yaml"), "--write", "cdm,note_nlp", "--note_id_field",
                 "record_id", *extra)


def cdm_documents(out) -> dict:
    found = {}
    for f in sorted((out / "cdm").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            found[doc["nlp_output"]["record_metadata"]["record_id"]] = doc
    return found


@pytest.mark.e2e
def test_cdm_records_round_trip_and_every_output_validates(cdm_input, tmp_path):
    d, records = cdm_input
    out = tmp_path / "out"
    annotate(d, out)
    written = cdm_documents(out)
    spans = pd.read_parquet(out / "spans")
    mentions = spans[spans.task != "negation"]
    assert len(written) == len(records)  # the invalid record too, as a failed document
    for record_id, md in records.items():
        doc = written[record_id if record_id != 5004 else "note4.json"]
        assert problems(doc) == []  # types and vocabularies of the CDM
        got = doc["nlp_output"]["record_metadata"]
        if record_id in (5004, 5006, 5007):  # failed, skipped: not analysed
            assert doc["nlp_output"]["processing_success"] is False
            assert doc["nlp_output"]["annotations"] == []
            continue
        assert doc["nlp_output"]["processing_success"] is True
        text = (d / "in" / "note1.txt").read_text(encoding="utf-8") if record_id == 5001 \
            else md["text"]
        assert got == {**md, "text": text, **{k: got[k] for k in (
            "nlp_processing_date", "nlp_processing_pipeline_name",
            "nlp_processing_pipeline_version")}}  # metadata out unchanged
        mine = mentions[mentions.doc_id == str(record_id)].sort_values(["start", "end", "task"])
        annotations = sorted(doc["nlp_output"]["annotations"],
                             key=lambda a: (a["start_offset"], a["end_offset"]))
        assert len(annotations) == len(mine) > 0
        assert {(a["start_offset"], a["end_offset"], a["concept_class"],
                 a["concept_mention_string"], a["negation"], a["uncertainty"])
                for a in annotations} == {
            (m.start, m.end, m.label.lower(), text[m.start:m.end],
             "yes" if m.negated else "no", "yes" if m.uncertain else "no")
            for m in mine.itertuples()}
    documents = pd.read_parquet(out / "documents").set_index("doc_id")
    assert documents.loc["note4.json", "reason"] == (
        "read: CDM record: nlp_output.record_metadata.patient_id is missing")
    assert documents.loc[["5006", "5007"], "status"].tolist() == ["skipped", "skipped"]

    # NOTE_NLP: the v5.4 columns, a row per mention, its CSV twin
    table = pq.read_table(out / "note_nlp" / "parquet")
    assert table.schema.names == NOTE_NLP_SCHEMA.names
    assert [f.type for f in table.schema] == [f.type for f in NOTE_NLP_SCHEMA]
    notes = table.to_pandas()
    assert len(notes) == len(mentions) and notes.note_nlp_id.is_unique
    assert sorted(notes.note_id.unique()) == sorted(int(i) for i in mentions.doc_id.unique())
    flagged = (mentions.negated | mentions.uncertain).sum()
    assert 0 < (notes.term_exists == "N").sum() == flagged < len(notes)
    csv = pd.concat(pd.read_csv(f) for f in (out / "note_nlp" / "csv").glob("*.csv"))
    assert sorted(csv.note_nlp_id) == sorted(notes.note_nlp_id)

    # a rerun over the same input writes the same ids, and no row twice
    annotate(d, out, "--force")
    again = pq.read_table(out / "note_nlp" / "parquet").to_pandas()
    assert sorted(again.note_nlp_id) == sorted(notes.note_nlp_id)
    assert len(cdm_documents(out)) == len(records)
    assert sum(1 for f in (out / "cdm").glob("*.jsonl") for _ in f.open()) == len(records)


@pytest.mark.e2e
def test_note_nlp_without_note_ids_is_said_before_reading_or_leaves_documents_out(
        smoke_tasks, tmp_path):
    txt = tmp_path / "txt"
    txt.mkdir()
    texts = [read_text(f) for f in spaccc_files(4)]
    for i, text in enumerate(texts):
        (txt / f"S000{i}-case.txt").write_text(text, encoding="utf-8")
    common = ["--tasks", str(smoke_tasks), "--language", "es", "--write", "cdm,note_nlp"]
    stopped = run_pipeline("--input", str(txt), "--output", str(tmp_path / "o1"), *common,
                           check=False)
    last = stopped.stderr.strip().splitlines()[-1]
    assert stopped.returncode == 1 and "none of the 4 .txt files is named by an integer" in last
    assert not (tmp_path / "o1" / "documents").exists()  # said before any document was read

    def records(ids):
        folder = tmp_path / f"jsonl-{ids[1]}"
        folder.mkdir()
        (folder / "notes.jsonl").write_text("".join(
            json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
        return folder

    for ids, rc in ((["101", "102", "103", "S4"], 0), (["101", "S2", "S3", "S4"], 1)):
        out = tmp_path / f"out-{rc}"
        ran = run_pipeline("--input", str(records(ids)), "--output", str(out), *common,
                           check=False)
        docs = pd.read_parquet(out / "documents")
        assert ran.returncode == rc and set(docs.status) == {"annotated"}  # none failed
        notes = pd.read_parquet(out / "note_nlp" / "parquet")
        assert set(notes.note_id) == {int(i) for i in ids if i.isdigit()}
        assert len(cdm_documents(out)) == 4 and len(pd.read_csv(out / "symptom.tsv", sep="\t"))
        left = sum(not i.isdigit() for i in ids)
        said = [line for line in ran.stderr.splitlines() if "--write note_nlp: " in line]
        assert said and f"{left} of 4 annotated documents were left out of it" in said[-1]
        errors = pd.read_parquet(out / "errors")
        assert sorted(errors.doc_id) == sorted(i for i in ids if not i.isdigit())
        assert set(errors.stage) == {"note_nlp"}
