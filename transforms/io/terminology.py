"""Terminologies a linker codes mentions with, read from any fsspec location:

- a TSV file, one row per synonym: ``code<TAB>term`` or ``code<TAB>term<TAB>language`` (a
  first row ``code<TAB>term...`` is a header; the first row of a code is its preferred term);
- an OMOP vocabulary folder as Athena delivers it: ``CONCEPT.csv`` and, where present,
  ``CONCEPT_SYNONYM.csv`` (tab-separated, unquoted), filtered by any of ``vocabulary_id``,
  ``domain_id``, ``concept_class_id``, ``standard_concept`` (``S``, ``C``, or ``none``) and
  never taking an invalidated concept. Codes are ``concept_code``, the system the
  ``vocabulary_id``, and each term keeps its ``concept_id``.
"""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from transforms.core.link import Term, normalize
from transforms.core.spec import is_lang_code, normalize_lang
from transforms.io.storage import file_digest, store_version

OMOP_FILTERS = ("vocabulary_id", "domain_id", "concept_class_id", "standard_concept")
CONCEPT, SYNONYM = "CONCEPT.csv", "CONCEPT_SYNONYM.csv"


class TerminologyError(ValueError):
    """A terminology that cannot be read or holds no term: a set-up error."""


def is_omop(location: str) -> bool:
    """Whether ``location`` is an OMOP vocabulary folder (it holds ``CONCEPT.csv``)."""
    fs, path = fsspec.core.url_to_fs(location)
    return fs.isdir(path) and fs.exists(posixpath.join(path, CONCEPT))


def digest(location: str) -> str:
    """A terminology's content digest (an OMOP folder: its CONCEPT and CONCEPT_SYNONYM): of a
    local file, its bytes' SHA-256; of a remote one (gs://, s3://), its store's version of the
    object (``store_version``: an object rewritten in place is a new terminology)."""
    fs, root = fsspec.core.url_to_fs(location)
    names = [n for n in (CONCEPT, SYNONYM) if fs.exists(posixpath.join(root, n))
             ] if is_omop(location) else [""]
    paths = [posixpath.join(root, n) if n else root for n in names]
    local = isinstance(fs, LocalFileSystem)
    return hashlib.sha256("".join(file_digest(Path(p)) if local else store_version(fs, p)[0]
                                  for p in paths).encode()).hexdigest()


def read_terms(location: str, system: str | None = None,
               filters: Mapping[str, Sequence[str]] | None = None) -> list[Term]:
    """Every term of a terminology (see the module docstring) that has a letter or digit;
    ``system`` names a TSV's code system (default: the file's name without its extension).
    Raises ``TerminologyError`` with the reason."""
    try:
        if is_omop(location):
            terms = list(_omop_terms(location, filters or {}))
        else:
            fs, path = fsspec.core.url_to_fs(location)
            if fs.isdir(path):
                raise TerminologyError(f"terminology {location!r} is a folder without "
                                       f"{CONCEPT}: give a TSV file or an OMOP vocabulary "
                                       "folder")
            if filters:
                raise TerminologyError("`filters:` are for an OMOP vocabulary folder; "
                                       f"{location!r} is a TSV")
            name = posixpath.basename(location)
            terms = list(_tsv_terms(location, system or name.split(".")[0]))
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise TerminologyError(f"terminology {location!r} is unreadable: "
                               f"{type(e).__name__}: {e}") from e
    terms = [t for t in terms if normalize(t.term)]  # nothing left to match ("---")
    if not terms:
        raise TerminologyError(f"terminology {location!r} has no term"
                               + (" that passes its filters" if filters else "")
                               + " (with a letter or digit)")
    return terms


def _tsv_terms(location: str, system: str) -> Iterator[Term]:
    preferred: dict[str, str] = {}
    with fsspec.open(location, "rt", encoding="utf-8-sig", newline="") as f:
        for n, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if n == 1 and [x.strip().lower() for x in fields[:2]] == ["code", "term"]:
                continue
            if not line.strip():
                continue
            if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
                raise TerminologyError(f"terminology {location!r} line {n}: need "
                                       "code<TAB>term or code<TAB>term<TAB>language")
            code, term = fields[0].strip(), fields[1].strip()
            lang = normalize_lang(fields[2].strip()) or None if len(fields) == 3 else None
            if lang and not is_lang_code(lang):
                raise TerminologyError(f"terminology {location!r} line {n}: language "
                                       f"{fields[2].strip()!r} is not a language code "
                                       "(es, en, it, ...)")
            yield Term(code=code, term=term, system=system, language=lang,
                       preferred=preferred.setdefault(code, term))


def _read_tsv(fs, path: str, columns: Sequence[str]) -> pa.Table:
    with fs.open(path, "rb") as f:
        header = f.readline().decode("utf-8-sig").rstrip("\r\n").split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise TerminologyError(f"{posixpath.basename(path)} lacks the column(s) {missing}")
    with fs.open(path, "rb") as f:
        return pacsv.read_csv(
            f, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False,
                                                newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={c: pa.string() for c in columns if c != "concept_id"}
                | {"concept_id": pa.int64()} if "concept_id" in columns else {}))


def _blank(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.or_kleene(pc.is_null(column), pc.equal(column, "")), True)


def _omop_terms(location: str, filters: Mapping[str, Sequence[str]]) -> Iterator[Term]:
    fs, root = fsspec.core.url_to_fs(location)
    unknown = sorted(set(filters) - set(OMOP_FILTERS))
    if unknown:
        raise TerminologyError(f"OMOP filters {unknown} unknown; use {list(OMOP_FILTERS)}")
    concepts = _read_tsv(fs, posixpath.join(root, CONCEPT),
                         ("concept_id", "concept_name", "concept_code", "invalid_reason",
                          *OMOP_FILTERS))
    keep = _blank(concepts["invalid_reason"])
    for column, values in filters.items():
        wanted = pc.is_in(concepts[column], pa.array([str(v) for v in values]))
        if column == "standard_concept" and "none" in values:
            wanted = pc.or_(wanted, _blank(concepts[column]))
        keep = pc.and_(keep, wanted)
    concepts = concepts.filter(keep)
    by_id = {}
    for row in concepts.select(["concept_id", "concept_name", "concept_code",
                                "vocabulary_id"]).to_pylist():
        if not row["concept_code"] or not row["concept_name"]:
            continue  # a concept without a code or a name codes nothing
        by_id[row["concept_id"]] = row
        yield Term(code=row["concept_code"], term=row["concept_name"],
                   system=row["vocabulary_id"], concept_id=row["concept_id"],
                   preferred=row["concept_name"])
    synonyms = posixpath.join(root, SYNONYM)
    if not fs.exists(synonyms):
        return
    table = _read_tsv(fs, synonyms, ("concept_id", "concept_synonym_name"))
    table = table.filter(pc.is_in(table["concept_id"], pa.array(list(by_id), pa.int64())))
    for row in table.to_pylist():
        concept = by_id[row["concept_id"]]
        if row["concept_synonym_name"] and row["concept_synonym_name"] != concept["concept_name"]:
            yield Term(code=concept["concept_code"], term=row["concept_synonym_name"],
                       system=concept["vocabulary_id"], concept_id=row["concept_id"],
                       preferred=concept["concept_name"])
