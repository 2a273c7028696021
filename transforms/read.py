"""Reading documents: a folder of ``.txt`` files, a glob, or JSON Lines, on any fsspec filesystem.

A ``.txt`` file is one document whose id is the file name without ``.txt`` (as the MultiClinAI
layout and the reference scripts name it). A JSON Lines file holds one record a line with an
id, a text and optionally a language field. Text is decoded from bytes, never newline-translated,
so offsets count characters of the text exactly as stored. A document that cannot be read
becomes a ``failed`` record with the reason; it is never dropped.
"""

from __future__ import annotations

import json
import posixpath
from typing import Iterator

import apache_beam as beam
import fsspec

from transforms.records import FAILED, Document

TXT, JSONL = "txt", "jsonl"
_SUFFIXES = {".txt": TXT, ".jsonl": JSONL, ".jsonl.gz": JSONL, ".jsonl.zst": JSONL}


def input_format(path: str) -> str | None:
    """The format a file name says (``txt``/``jsonl``), or ``None``."""
    name = path.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def expand_input(pattern: str) -> list[str]:
    """The input files named by a directory, a glob or a file; fail when there are none."""
    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    files: list[str] = []
    for p in paths:
        if fs.isdir(p):
            files.extend(f for f in fs.find(p) if input_format(f))
        elif fs.isfile(p):
            if input_format(p) is None:
                raise ValueError(f"{p!r}: unsupported input format (use .txt, .jsonl[.gz|.zst])")
            files.append(p)
    if not files:
        raise ValueError(f"no input files match {pattern!r}")
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return sorted(set(files)) if local else sorted({fs.unstrip_protocol(f) for f in files})


def doc_id_of(path: str) -> str:
    """The document id of a ``.txt`` file: its name without the extension."""
    name = posixpath.basename(path.replace("\\", "/"))
    return name[: -len(".txt")] if name.lower().endswith(".txt") else name


def _decode(raw: bytes) -> tuple[str | None, str]:
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"


def read_txt(path: str) -> Iterator[Document]:
    """One document from a text file."""
    with fsspec.open(path, "rb") as f:
        text, reason = _decode(f.read())
    if text is None:
        yield Document(path, doc_id_of(path), None, path, status=FAILED, reason=f"read: {reason}")
    else:
        yield Document(path, doc_id_of(path), text, path)


def read_jsonl(
    path: str, id_field: str = "id", text_field: str = "text", lang_field: str = "lang"
) -> Iterator[Document]:
    """Documents from a JSON Lines file (compression from the name), streamed line by line."""
    base = posixpath.basename(path)
    with fsspec.open(path, "rb", compression="infer") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where, key = f"{base}:{lineno}", f"{path}:{lineno}"
            line, reason = _decode(raw)
            record = None
            if line is not None:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    reason = f"not JSON ({e.msg} at column {e.colno})"
            if record is not None and not isinstance(record, dict):
                record, reason = None, "not a JSON object"
            if record is None:
                yield Document(key, where, None, path, status=FAILED, reason=f"read: {reason}")
                continue
            doc_id, text = record.get(id_field), record.get(text_field)
            problem = (
                f"no `{id_field}` field" if doc_id in (None, "")
                else f"`{text_field}` is missing or not a string" if not isinstance(text, str)
                else ""
            )
            doc_id = str(doc_id) if doc_id not in (None, "") else where
            if problem:
                yield Document(key, doc_id, None, path, status=FAILED, reason=f"read: {problem}")
                continue
            lang = record.get(lang_field) or record.get("language")
            yield Document(key, doc_id, text, path, lang=str(lang) if lang else None)


class ReadDocuments(beam.PTransform):
    """Files -> ``Document``s, spread over workers by document rather than by file."""

    def __init__(self, pattern: str, id_field: str = "id", text_field: str = "text",
                 lang_field: str = "lang") -> None:
        super().__init__()
        self._files = expand_input(pattern)
        self._fields = (id_field, text_field, lang_field)

    def expand(self, pbegin):
        fields = self._fields

        def read(path: str) -> Iterator[Document]:
            if input_format(path) == TXT:
                return read_txt(path)
            return read_jsonl(path, *fields)

        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(read)
            | "SpreadDocuments" >> beam.Reshuffle()
        )
