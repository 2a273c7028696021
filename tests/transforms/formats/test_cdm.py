"""DT4H CDM records in (validated, metadata kept) and NlpResponse documents out (valid)."""

import json
import logging

import pytest

from tests.conftest import SPACCC, read_text
from transforms.formats.cdm import (CdmError, RunInfo, concept_class, problems, record_fields,
                                    response)
from transforms.read import Fields, ReadTask, read_task

TEXT = read_text(sorted((SPACCC / "txt").glob("*.txt"))[0])


def metadata(**changes):
    md = {"clinical_site_id": "H1", "patient_id": "P1", "admission_id": "A1", "record_id": 17,
          "deidentified": "yes", "deidentification_pipeline_name": "anon",
          "deidentification_pipeline_version": "2.1", "report_language": "es",
          "admission_type": "inpatient", "record_format": "txt", "text": TEXT, "ward": "ICU"}
    md.update(changes)
    return {k: v for k, v in md.items() if v is not ...}


def record(**changes):
    return {"nlp_output": {"record_metadata": metadata(**changes)}}


def test_a_record_gives_id_text_language_and_keeps_every_other_field():
    doc_id, text, lang, kept = record_fields(record())
    assert (doc_id, text, lang) == ("17", TEXT, "es")
    assert kept == {k: v for k, v in metadata().items() if k != "text"}  # "ward" too


@pytest.mark.parametrize("changes, message", [
    ({"patient_id": ...}, "nlp_output.record_metadata.patient_id is missing"),
    ({"record_id": 1.5}, "nlp_output.record_metadata.record_id must be string or integer"),
    ({"deidentified": None}, "nlp_output.record_metadata.deidentified must be string"),
    ({"text": 42}, "nlp_output.record_metadata.text must be string or null"),
])
def test_an_invalid_record_names_the_field_never_the_value(changes, message):
    with pytest.raises(CdmError) as e:
        record_fields(record(**changes))
    assert str(e.value) == f"CDM record: {message}"
    assert "P1" not in str(e.value) and "1.5" not in str(e.value)
    with pytest.raises(CdmError, match="nlp_output is missing"):
        record_fields({"record_metadata": metadata()})


def test_a_value_outside_a_vocabulary_passes_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        for _ in range(3):
            kept = record_fields(record(admission_type="day-care"))[3]
    assert kept["admission_type"] == "day-care"
    assert [r.getMessage() for r in caplog.records if "admission_type" in r.getMessage()] == [
        "CDM input: admission_type has values outside the CDM's (inpatient | ambulatory | "
        "observation-encounter | emergency); passed through unchanged"]


def test_concept_classes_are_mapped_as_the_service_maps_them(caplog):
    assert [concept_class(x) for x in ("DISEASE", "B-SINTOMA", "procedimiento", "Drug",
                                       "CARDIOLOGY_ENTITY")] == [
        "disorder/disease", "symptom", "procedure", "medication", "cardiology entity"]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert concept_class("GENE") == concept_class("GENE") == "GENE"
    assert len([r for r in caplog.records if "'GENE'" in r.getMessage()]) == 1


def span(task, label, start, end, negated=None, uncertain=None):
    return {"task": task, "label": label, "start": start, "end": end,
            "text": TEXT[start:end], "score": 0.75, "negated": negated,
            "negated_score": 0.9 if negated else None, "uncertain": uncertain,
            "uncertain_score": 0.6 if uncertain else None}


def test_a_response_validates_and_carries_the_record_unchanged():
    info = RunInfo(version="1.2.3", models={"symptom": "abc123"},
                   locations={"symptom": "m.pt"})
    meta = {k: v for k, v in metadata().items() if k != "text"}
    document = {"doc_id": "17", "lang": "es", "status": "annotated", "tasks": "symptom,negation",
                "meta": json.dumps({"record_metadata": meta})}
    mentions = [span("symptom", "SYMPTOM", 0, 8, negated=True, uncertain=False),
                span("symptom", "SYMPTOM", 10, 15)]
    out = response(document, TEXT, mentions, info)
    assert problems(out) == []
    md = out["nlp_output"]["record_metadata"]
    assert {k: md[k] for k in meta} == meta and md["text"] == TEXT
    assert md["nlp_processing_pipeline_version"] == "1.2.3"
    first, second = out["nlp_output"]["annotations"]
    assert (first["concept_class"], first["start_offset"], first["end_offset"],
            first["concept_mention_string"]) == ("symptom", 0, 8, TEXT[:8])
    assert (first["negation"], first["negation_confidence"], first["uncertainty"]) == (
        "yes", 0.9, "no")
    assert (second["negation"], second["uncertainty"]) == (None, None)  # not assessed: null
    assert first["ner_component_type"] == "transformer"
    assert first["ner_component_version"] == "abc123"
    assert first["concept_confidence"] is None  # the linking score: no linker, no code
    coded = response(document, TEXT, [{**mentions[0], "code": "C1", "code_term": "tos",
                                       "code_system": "HPO", "link_score": 0.93,
                                       "link_method": "ngram"}], info)
    (linked,) = coded["nlp_output"]["annotations"]
    assert (linked["concept_confidence"], linked["nel_component_type"],
            linked["nel_component_version"], linked["controlled_vocabulary_namespace"]) == (
        0.93, "lexical similarity", "ngram", "HPO")
    assert problems(coded) == []
    fused = response(document, TEXT, [{**mentions[0], "code": "C1", "link_score": 0.0323,
                                       "link_method": "fused"}], info)
    (ranked,) = fused["nlp_output"]["annotations"]
    assert ranked["concept_confidence"] is None  # a rank fusion's sum is no confidence
    assert ranked["nel_component_version"] == "fused"
    assert out["nlp_service_info"]["service_model"] == (
        "symptom=m.pt@abc123; negation=negation@unknown")
    failed = response({**document, "status": "failed"}, None, [], info)
    assert failed["nlp_output"]["processing_success"] is False and problems(failed) == []


def test_a_skipped_record_in_a_language_the_cdm_does_not_list_still_validates():
    info = RunInfo(version="1", models={}, locations={})
    for lang, said in (("fr", None), ("de", None), ("es", "es"), (None, None)):
        document = {"doc_id": "n1", "lang": lang, "status": "skipped", "tasks": "",
                    "meta": json.dumps({"ward": "3"})}
        out = response(document, "Le patient.", [], info)
        assert problems(out) == [], lang
        assert out["nlp_output"]["record_metadata"]["report_language"] == said


def test_the_response_schema_catches_what_the_cdm_forbids():
    good = response({"doc_id": "1", "lang": "es", "status": "annotated", "tasks": "t",
                     "meta": None}, "x", [span("t", "SYMPTOM", 0, 1)], RunInfo())
    bad = json.loads(json.dumps(good))
    bad["nlp_output"]["annotations"][0]["negation"] = "maybe"
    bad["nlp_output"]["annotations"][0]["start_offset"] = "0"
    del bad["nlp_service_info"]["service_model"]
    assert problems(bad) == [
        "nlp_output.annotations.0.negation is not one of the CDM values",
        "nlp_output.annotations.0.start_offset must be integer or null",
        "nlp_service_info.service_model is missing"]


def test_cdm_files_are_read_with_their_metadata(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(record()))
    (tmp_path / "b.json").write_text(json.dumps(record(text="", record_id="R-2")))
    (tmp_path / "b.txt").write_bytes(TEXT.encode())
    (tmp_path / "c.json").write_text(json.dumps(record(text="", record_id=3)))
    (tmp_path / "d.json").write_text(json.dumps(record(clinical_site_id=...)))
    (tmp_path / "e.json").write_text("{not json")
    lines = tmp_path / "many.jsonl"
    lines.write_text(json.dumps(record(record_id=5)) + "\n" + json.dumps(record(patient_id=7))
                     + "\n")
    docs = {}
    for name in ("a.json", "b.json", "c.json", "d.json", "e.json", "many.jsonl"):
        for d in read_task(ReadTask((str(tmp_path / name),), "cdm"), Fields()):
            docs[d.doc_id] = d
    assert docs["17"].text == TEXT and docs["17"].lang == "es"
    assert json.loads(docs["17"].meta)["record_metadata"]["ward"] == "ICU"
    assert docs["R-2"].text == TEXT  # an empty text: read from the .txt beside it
    assert docs["3"].status == "failed" and docs["3"].text is None
    assert docs["3"].reason == "read: CDM record: text is empty and c.txt is missing"
    assert docs["d.json"].reason == ("read: CDM record: nlp_output.record_metadata."
                                     "clinical_site_id is missing")
    assert docs["e.json"].reason.startswith("read: not JSON")
    assert docs["5"].text == TEXT
    assert docs["many.jsonl@" + str(len(json.dumps(record(record_id=5))) + 1)].reason == (
        "read: CDM record: nlp_output.record_metadata.patient_id must be string")
