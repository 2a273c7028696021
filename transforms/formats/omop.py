"""OMOP CDM v5.4 ``NOTE_NLP`` rows: one per mention, ready for a site's OHDSI database.

Columns and types as the v5.4 DDL gives them (integers as 64-bit, as its BigQuery DDL does;
``note_nlp_id`` needs it: the v5.4 field table calls it a big integer), text columns cut to
the DDL's ``varchar`` lengths. ``note_nlp_id`` is a hash of the note, task, label and offsets:
a rerun over the same input writes the same ids, so loading it again cannot duplicate rows.
"""

from __future__ import annotations

import hashlib
from datetime import timezone
from typing import Any, Mapping, Sequence

import pyarrow as pa

from transforms.formats.cdm import RunInfo, input_fields

NOTE_NLP_SCHEMA = pa.schema([
    ("note_nlp_id", pa.int64()), ("note_id", pa.int64()), ("section_concept_id", pa.int64()),
    ("snippet", pa.string()), ("offset", pa.string()), ("lexical_variant", pa.string()),
    ("note_nlp_concept_id", pa.int64()), ("note_nlp_source_concept_id", pa.int64()),
    ("nlp_system", pa.string()), ("nlp_date", pa.date32()), ("nlp_datetime", pa.timestamp("ms")),
    ("term_exists", pa.string()), ("term_temporal", pa.string()),
    ("term_modifiers", pa.string()),
])
VARCHAR = {"snippet": 250, "offset": 50, "lexical_variant": 250, "nlp_system": 250,
           "term_exists": 1, "term_temporal": 50, "term_modifiers": 2000}


class NoteIdError(ValueError):
    """A document without an integer note id: its mentions cannot be NOTE_NLP rows."""


def note_id(document: Mapping[str, Any], field: str | None) -> int:
    """The document's OMOP note id: the integer in metadata ``field`` (None: the document id)."""
    value = document["doc_id"] if field is None else input_fields(document)[0].get(field)
    text = str(value).strip() if value is not None and not isinstance(value, bool) else ""
    if not text.lstrip("-").isdigit() or not -(1 << 63) <= int(text) < (1 << 63):
        raise NoteIdError(f"no integer note id in `{field or 'the document id'}`")
    return int(text)


def note_nlp_id(note: int, task: str, label: str, start: int, end: int) -> int:
    """A positive 63-bit id, the same for the same mention of the same note."""
    digest = hashlib.blake2b(f"{note}\t{task}\t{label}\t{start}\t{end}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def snippet(text: str, start: int, end: int, width: int) -> str:
    """At most ``width`` characters around ``text[start:end]``, the mention centred."""
    room = max(0, width - (end - start)) // 2
    lo = max(0, min(start - room, len(text) - width))
    return text[lo:lo + width]


def _cut(value: str | None, column: str) -> str | None:
    return None if value is None else value[:VARCHAR[column]]


def modifiers(span: Mapping[str, Any]) -> str:
    """``term_modifiers``: the task and label, and negation and uncertainty where assessed."""
    parts = [f"task={span['task']}", f"label={span['label']}"]
    for flag in ("negated", "uncertain"):
        if span.get(flag) is not None:
            parts.append(f"{flag}={'yes' if span[flag] else 'no'}")
    return ";".join(parts)


def note_nlp_rows(document: Mapping[str, Any], text: str | None,
                  mentions: Sequence[Mapping[str, Any]], info: RunInfo) -> list[dict]:
    """The ``NOTE_NLP`` rows of a document's mentions; raises ``NoteIdError`` when it has
    mentions but no integer note id."""
    if not mentions:
        return []
    note = note_id(document, info.note_id_field)
    started = info.started.astimezone(timezone.utc).replace(tzinfo=None)
    rows = []
    for s in mentions:
        flagged = bool(s.get("negated")) or bool(s.get("uncertain"))
        rows.append({
            "note_nlp_id": note_nlp_id(note, s["task"], s["label"], s["start"], s["end"]),
            "note_id": note, "section_concept_id": None,
            "snippet": snippet(text or "", s["start"], s["end"], info.snippet_chars),
            "offset": str(s["start"]), "lexical_variant": _cut(s["text"], "lexical_variant"),
            "note_nlp_concept_id": s.get("concept_id") or 0,
            "note_nlp_source_concept_id": s.get("concept_id"),
            "nlp_system": _cut(f"{info.pipeline} {info.version}; {s['task']} "
                               f"{info.model(s['task'])}", "nlp_system"),
            "nlp_date": info.started.date(), "nlp_datetime": started,
            "term_exists": "N" if flagged else "Y", "term_temporal": None,
            "term_modifiers": _cut(modifiers(s), "term_modifiers"),
        })
    return rows
