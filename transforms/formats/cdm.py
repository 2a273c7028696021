"""The DT4H common data model (CDM): records in, one ``NlpResponse`` per document out.

A CDM document is ``{"nlp_output": {"record_metadata": {...}}}`` (its ``annotations`` and
``nlp_service_info``, if any, are ignored: the pipeline makes them). The record's metadata gives
the document: ``record_id`` its id, ``text`` its text (an empty text in ``X.json`` is read from
``X.txt`` beside it), ``report_language`` its language; every metadata field travels with the
document, unchanged, and comes back in its ``NlpResponse``. The field types, the seven fields an
input record must have, and the closed vocabularies follow the DT4H annotation service's CDM
(``app/src/format/data_structures.py``); ``schema()`` states them as JSON Schema, which input
records are checked against (an invalid record is a dead letter naming the field; a value outside
a vocabulary passes with one warning per field, as the service does) and which tests check
every written document against.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any, Mapping, Sequence

LOG = logging.getLogger("pipeline")

YES_NO = ("yes", "no")
CONCEPT_CLASSES = ("symptom", "disorder/disease", "procedure", "medication",
                   "cardiology entity", "other")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "admission_type": ("inpatient", "ambulatory", "observation-encounter", "emergency"),
    "record_format": ("txt", "PDF", "XML", "json", "docx"),
    "record_character_encoding": ("ASCII", "UTF-8", "UTF-16", "UTF-32", "No encoding",
                                  "Unknown"),
    "report_language": ("en", "nl", "es", "it", "cs", "ro", "sv", "ca"),
    "deidentified": YES_NO,
    "concept_class": CONCEPT_CLASSES,
    "ner_component_type": ("dictionary lookup", "transformer", "other"),
    "nel_component_type": ("lexical similarity", "transformer", "other"),
    "negation": YES_NO,
    "uncertainty": YES_NO,
    "controlled_vocabulary_namespace": (
        "UMLS", "SNOMED CT", "ICD10", "MedDRA", "ICD9", "DT4H", "HPO", "LOINC", "ISO",
        "GeoNames", "MeSH", "ESCO", "ATC", "ICPC", "other", "none"),
    "controlled_vocabulary_source": ("original", "machine translation", "manual translation"),
}
_S, _ID, _F = "string", ["string", "integer"], "number"
METADATA: dict[str, Any] = {  # RecordMetadata: field -> JSON type
    "clinical_site_id": _S, "patient_id": _S, "admission_id": _S, "admission_date": _S,
    "admission_type": _S, "record_id": _ID, "record_type": _S, "record_format": _S,
    "record_creation_date": _S, "record_lastupdate_date": _S,
    "record_character_encoding": _S, "record_extraction_date": _S, "report_section": _S,
    "report_language": _S, "deidentified": _S, "deidentification_pipeline_name": _S,
    "deidentification_pipeline_version": _S, "text": _S,
}
MANDATORY = ("clinical_site_id", "patient_id", "admission_id", "record_id", "deidentified",
             "deidentification_pipeline_name", "deidentification_pipeline_version")
PROCESSING = ("nlp_processing_date", "nlp_processing_pipeline_name",
              "nlp_processing_pipeline_version")
ANNOTATION: dict[str, Any] = {  # Annotation: field -> JSON type
    "concept_class": _S, "start_offset": "integer", "end_offset": "integer",
    "concept_mention_string": _S, "concept_confidence": _F, "ner_component_type": _S,
    "ner_component_version": _S, "negation": _S, "negation_confidence": _F,
    "uncertainty": _S, "uncertainty_confidence": _F, "qualifier_negation": _S,
    "qualifier_temporal": _S, "dt4h_concept_identifier": _S, "nel_component_type": _S,
    "nel_component_version": _S, "controlled_vocabulary_namespace": _S,
    "controlled_vocabulary_version": _S, "controlled_vocabulary_concept_identifier": _S,
    "controlled_vocabulary_concept_official_term": _S, "controlled_vocabulary_source": _S,
    "symptom_date": _S,
}
# model labels (lower case, BIO prefix and separators dropped) -> concept_class
CONCEPT_CLASS_OF = {
    **dict.fromkeys(("disease", "diseases", "disorder", "disorders", "disorder/disease",
                     "enfermedad", "enfermedades"), "disorder/disease"),
    **dict.fromkeys(("symptom", "symptoms", "sintoma", "síntoma", "sintomas", "síntomas"),
                    "symptom"),
    **dict.fromkeys(("procedure", "procedures", "procedimiento", "procedimientos"),
                    "procedure"),
    **dict.fromkeys(("medication", "medications", "drug", "drugs", "medicamento",
                     "medicamentos", "farmaco", "fármaco"), "medication"),
    "cardiology entity": "cardiology entity", "other": "other",
}
_BIO = re.compile(r"^[BIOES]-")


class CdmError(ValueError):
    """A CDM record that does not validate; the message names the field, never a value."""


def _nullable(kind: Any, enum: Sequence[str] | None = None) -> dict:
    types = (kind if isinstance(kind, list) else [kind]) + ["null"]
    return {"type": types, **({"enum": [*enum, None]} if enum else {})}


@cache
def schema(kind: str = "response") -> dict:
    """JSON Schema of a CDM ``input`` record (its mandatory fields and types; vocabularies are
    checked apart, as warnings) or of a ``response`` the pipeline writes (types and
    vocabularies)."""
    strict = kind == "response"

    def props(fields: Mapping[str, Any]) -> dict:
        return {name: _nullable(t, VOCABULARIES.get(name) if strict else None)
                for name, t in fields.items()}

    metadata: dict[str, Any] = {"type": "object", "properties": props(METADATA)}
    if strict:
        metadata["properties"].update({"text": {"type": "string"},
                                       **{p: {"type": "string"} for p in PROCESSING}})
        metadata["required"] = ["text", *PROCESSING]
        annotation = {"type": "object", "properties": props(ANNOTATION),
                      "required": list(ANNOTATION), "additionalProperties": False}
        output = {"type": "object", "required": ["record_metadata", "annotations",
                                                 "processing_success"],
                  "properties": {"record_metadata": metadata,
                                 "annotations": {"type": "array", "items": annotation},
                                 "processing_success": {"type": "boolean"}}}
        info = {"type": "object", "required": ["service_app_name", "service_language",
                                               "service_version", "service_model"],
                "properties": {k: {"type": "string"} for k in (
                    "service_app_name", "service_language", "service_version",
                    "service_model")}}
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["nlp_output", "nlp_service_info"],
                "properties": {"nlp_output": output, "nlp_service_info": info}}
    metadata["required"] = list(MANDATORY)
    metadata["properties"].update({m: {"type": "string" if m != "record_id" else _ID}
                                   for m in MANDATORY})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "required": ["nlp_output"],
            "properties": {"nlp_output": {"type": "object", "required": ["record_metadata"],
                                          "properties": {"record_metadata": metadata}}}}


@cache
def _validator(kind: str):
    import jsonschema

    return jsonschema.Draft202012Validator(schema(kind))


def problems(document: Any, kind: str = "response") -> list[str]:
    """What makes ``document`` invalid against ``schema(kind)``: the field and the rule, never
    the value (values may be patient data)."""
    out = []
    for e in sorted(_validator(kind).iter_errors(document), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path) or "the document"
        if e.validator == "required":
            missing = [f for f in e.validator_value if not isinstance(e.instance, dict)
                       or f not in e.instance]
            out += [f"{where + '.' if e.path else ''}{f} is missing" for f in missing]
        elif e.validator == "type":
            kinds = e.validator_value
            out.append(f"{where} must be "
                       f"{' or '.join(kinds) if isinstance(kinds, list) else kinds}")
        elif e.validator == "enum":
            out.append(f"{where} is not one of the CDM values")
        else:
            out.append(f"{where} breaks the rule `{e.validator}`")
    return out


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        LOG.warning(message, *args)


def record_fields(document: Any) -> tuple[str, str, str | None, dict]:
    """A CDM input document's ``(id, text, language, metadata without the text)``; raises
    ``CdmError`` naming the first invalid field. Out-of-vocabulary values pass, with one
    warning per field."""
    found = problems(document, "input")
    if found:
        raise CdmError(f"CDM record: {found[0]}")
    metadata = dict(document["nlp_output"]["record_metadata"])
    for name, allowed in VOCABULARIES.items():
        if metadata.get(name) is not None and metadata[name] not in allowed:
            _warn_once(f"in:{name}", "CDM input: %s has values outside the CDM's (%s); passed "
                       "through unchanged", name, " | ".join(allowed))
    text = metadata.pop("text", None) or ""
    return str(metadata["record_id"]), text, metadata.get("report_language"), metadata


def concept_class(label: str) -> str:
    """The CDM ``concept_class`` of a model label (``DISEASE`` -> ``disorder/disease``); a label
    the table does not know passes through unchanged, with one warning per label."""
    key = " ".join(_BIO.sub("", label.strip()).replace("_", " ").replace("-", " ").lower()
                   .split())
    found = CONCEPT_CLASS_OF.get(key)
    if found is None:
        _warn_once(f"class:{label}", "CDM output: label %r has no concept_class; written "
                   "unchanged (extend transforms.formats.cdm.CONCEPT_CLASS_OF)", label)
        return label
    return found


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What the outputs say of the run: the pipeline's name and version, when it started (UTC),
    each task's model version (pinned revision or fingerprint) and location, the metadata field
    holding NOTE_NLP's integer note id (None: the document id) and the snippet's width."""

    pipeline: str = "clinical-ner-pipeline"
    version: str = "unknown"
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    models: Mapping[str, str] = field(default_factory=dict)
    locations: Mapping[str, str] = field(default_factory=dict)
    note_id_field: str | None = None
    snippet_chars: int = 100

    def model(self, task: str) -> str:
        """``location@version`` of a task's model."""
        return f"{self.locations.get(task, task)}@{self.models.get(task, 'unknown')}"


def input_fields(document: Mapping[str, Any]) -> tuple[dict, bool]:
    """A document row's input fields besides its text, and whether they are a CDM record's
    metadata (else a flat record's other fields)."""
    meta = json.loads(document["meta"]) if document.get("meta") else {}
    cdm = isinstance(meta.get("record_metadata"), dict)
    return (dict(meta["record_metadata"]) if cdm else meta), cdm


def record_metadata(document: Mapping[str, Any]) -> dict:
    """A document row's CDM metadata: a CDM record's, unchanged; else its id, its language
    (where the CDM's vocabulary has it) and those of its other fields that the CDM names."""
    fields, cdm = input_fields(document)
    if cdm:
        return fields
    found = {k: v for k, v in fields.items() if k in METADATA and k != "text"}
    lang = document.get("lang")  # a language the CDM does not list (fr, de...) stays unsaid
    lang = lang if lang in VOCABULARIES["report_language"] else None
    return {"record_id": document["doc_id"], "report_language": lang, **found}


_NAMESPACES = {"snomed": "SNOMED CT", "snomedct": "SNOMED CT", "sct": "SNOMED CT",
               "icd10": "ICD10", "icd10cm": "ICD10", "icd10pcs": "ICD10", "icd9": "ICD9",
               "icd9cm": "ICD9", "meddra": "MedDRA", "hpo": "HPO", "loinc": "LOINC",
               "mesh": "MeSH", "atc": "ATC", "icpc": "ICPC", "icpc2": "ICPC", "umls": "UMLS",
               "dt4h": "DT4H"}


def namespace(system: str | None) -> str | None:
    """The CDM ``controlled_vocabulary_namespace`` of a code system (an OMOP
    ``vocabulary_id`` such as ``SNOMED``, or a TSV's name); ``other`` where the CDM has none."""
    if not system:
        return None
    return _NAMESPACES.get("".join(c for c in system.lower() if c.isalnum()), "other")


def linking(span: Mapping[str, Any]) -> dict:
    """A coded mention's CDM linking fields (null where it has no code)."""
    if not span.get("code"):
        return {}
    return {"nel_component_type": ("transformer" if span.get("link_method") in ("dense", "fused")
                                   else "lexical similarity"),
            "nel_component_version": span.get("link_method"),
            "controlled_vocabulary_namespace": namespace(span.get("code_system")),
            "controlled_vocabulary_concept_identifier": span["code"],
            "controlled_vocabulary_concept_official_term": span.get("code_term"),
            "controlled_vocabulary_source": "original"}


def annotation(span: Mapping[str, Any], info: RunInfo) -> dict:
    """A mention as a CDM ``Annotation``: what the pipeline cannot know stays null."""
    return {**dict.fromkeys(ANNOTATION),
            "concept_class": concept_class(span["label"]),
            "start_offset": span["start"], "end_offset": span["end"],
            "concept_mention_string": span["text"],
            # the linking score, as the DT4H service writes it (its docs/cdm_open_questions.md:
            # one field cannot carry two measurements; the NER score is in the span tables);
            # none for a fused code, whose score is a rank fusion's, not a 0-1 confidence
            "concept_confidence": (span.get("link_score") if span.get("code")
                                   and span.get("link_method") != "fused" else None),
            "ner_component_type": "transformer",
            "ner_component_version": info.models.get(span["task"]),
            "negation": _yes_no(span.get("negated")),
            "negation_confidence": span.get("negated_score"),
            "uncertainty": _yes_no(span.get("uncertain")),
            "uncertainty_confidence": span.get("uncertain_score"),
            **linking(span)}


def response(document: Mapping[str, Any], text: str | None,
             mentions: Sequence[Mapping[str, Any]], info: RunInfo) -> dict:
    """One document's ``NlpResponse``: its metadata as read plus this run's processing fields,
    an ``Annotation`` per mention, and ``processing_success`` true only where the document was
    annotated (a failed or skipped one was not analysed: not "nothing found")."""
    tasks = [t for t in (document.get("tasks") or "").split(",") if t]
    return {
        "nlp_output": {
            "record_metadata": {
                **record_metadata(document), "text": text or "",
                "nlp_processing_date": info.started.isoformat(timespec="milliseconds"),
                "nlp_processing_pipeline_name": info.pipeline,
                "nlp_processing_pipeline_version": info.version},
            "annotations": [annotation(m, info) for m in mentions],
            "processing_success": document["status"] == "annotated"},
        "nlp_service_info": {
            "service_app_name": info.pipeline, "service_language": "en",
            "service_version": info.version,
            "service_model": "; ".join(f"{t}={info.model(t)}" for t in tasks)},
    }
