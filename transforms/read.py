"""Reading documents from any fsspec filesystem: ``.txt`` folders, JSON Lines, Parquet shards
and DT4H CDM documents.

- ``.txt``: one document per file, id = file name without ``.txt`` (the MultiClinAI layout).
- ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst``: one record a line.
- ``.parquet``: one record a row, read by row group in small batches.
- ``.json``: one DT4H CDM document per file (``--input_format cdm``: JSON Lines of them); see
  ``transforms.formats.cdm``. An invalid record is a ``failed`` document naming the field.

Records carry an id, a text and optionally a language (``--id_field``, ``--text_field``,
``--lang_field``); other fields travel to ``out/documents/`` as JSON (``meta``). Files are
listed on workers, skipping those an earlier run over the same output completed (see
``transforms.io.shards``); large uncompressed JSONL files are split into byte ranges and Parquet
files into row groups, and these read tasks (not the documents) are spread over the workers, so
neither a big shard nor a big folder stalls one worker and no document's text is shuffled.
Text is decoded from bytes, never newline-translated, so offsets count characters exactly as
stored. A record whose bytes are damaged becomes a ``failed`` document with the reason, never
dropped; a storage or network error is raised, so the runner retries the read.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

import apache_beam as beam
import fsspec
import fsspec.compression
import fsspec.utils
from apache_beam.metrics import Metrics

from transforms.formats.cdm import CdmError, record_fields
from transforms.core.faults import is_damaged_data
from transforms.io.progress import PROGRESS
from transforms.core.records import FAILED, Document, Shard
from transforms.io.shards import (Resume, expand_pattern, input_format, list_root, pending,
                                  text_file_of)

TXT, JSONL, PARQUET, CDM = "txt", "jsonl", "parquet", "cdm"
SPLIT_BYTES = 64 << 20
TXT_BATCH = 64  # .txt files per read task
TXT_CONCURRENCY = 4  # requests in flight per task (gcp-storage-emulator stalls above ~4)


@dataclass(frozen=True, kw_only=True)
class Fields:
    """Which record fields hold the id, the text and the language."""

    id: str = "id"
    text: str = "text"
    lang: str = "lang"


@dataclass(frozen=True)
class ReadTask:
    """Something to read: a batch of ``.txt`` files, a whole file, a byte range of a JSONL
    file or row groups of a Parquet file."""

    paths: tuple[str, ...]
    fmt: str
    size: int = 0
    start: int = 0
    end: int | None = None
    row_groups: tuple[int, ...] = ()

    @property
    def path(self) -> str:
        """The (first) file of the task."""
        return self.paths[0]


def plan_reads(shards: Iterable[Shard], forced: str | None = None) -> Iterator[ReadTask]:
    """One task per file, ``.txt`` files in batches (fetched concurrently from object stores)."""
    txt: list[str] = []
    for shard in shards:
        fmt = input_format(shard.url, forced)
        if fmt == TXT:
            txt.append(shard.url)
            if len(txt) == TXT_BATCH:
                yield ReadTask(tuple(txt), TXT)
                txt = []
        else:
            yield ReadTask((shard.url,), fmt, shard.size)
    if txt:
        yield ReadTask(tuple(txt), TXT)


def split_task(task: ReadTask, split_bytes: int = SPLIT_BYTES) -> Iterator[ReadTask]:
    """Pieces of a file that can be read independently: byte ranges of a large uncompressed
    JSONL file, row groups of a Parquet file; anything else whole."""
    if (task.fmt in (JSONL, CDM) and task.path.lower().endswith(".jsonl")
            and task.size > split_bytes):
        for start in range(0, task.size, split_bytes):
            yield replace(task, start=start, end=min(start + split_bytes, task.size))
    elif task.fmt == PARQUET:
        import pyarrow.parquet as pq

        try:
            with fsspec.open(task.path, "rb") as f:
                n = pq.ParquetFile(f).metadata.num_row_groups
        except Exception as e:  # a damaged file is read (and failed) whole by read_task
            if not is_damaged_data(e):
                raise
            n = 0
        for i in range(max(n, 1)):
            yield replace(task, row_groups=(i,) if n else ())
    else:
        yield task


def doc_id_of(path: str) -> str:
    """The document id of a ``.txt`` file: its name without the extension (a backslash is part
    of a name: paths here are URLs and POSIX paths)."""
    name = posixpath.basename(path)
    return name[: -len(".txt")] if name.lower().endswith(".txt") else name


def _decode(raw: bytes) -> tuple[str | None, str]:
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"


def read_txt(task: ReadTask, fields: Fields | None = None) -> Iterator[Document]:
    """One document per text file of the task's batch; a file gone since it was listed is a
    failed document, any other storage error is raised."""
    fs, _, paths = fsspec.get_fs_token_paths(list(task.paths))
    contents = fs.cat(paths, on_error="return", batch_size=TXT_CONCURRENCY)
    for url, path in zip(task.paths, paths):
        raw = contents.get(path, FileNotFoundError(path))
        if isinstance(raw, FileNotFoundError):
            text, reason = None, "gone since it was listed (FileNotFoundError)"
        elif isinstance(raw, PermissionError):
            text, reason = None, NOT_READABLE
        elif isinstance(raw, BaseException):
            raise raw
        else:
            text, reason = _decode(raw)
        if text is None:
            yield Document(url, doc_id_of(url), None, url, status=FAILED, reason=f"read: {reason}")
        else:
            yield Document(url, doc_id_of(url), text, url)


NOT_READABLE = "not readable (PermissionError)"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str) -> tuple[Any, str | None]:
    """A JSON value, or the reason it is not one a document can come from (nothing of the
    text in it): not JSON, nested too deep, or holding a lone UTF-16 surrogate (a ``\\uD800``
    to ``\\uDFFF`` escape that no character follows), which no file can be written with."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        line = f"line {e.lineno} column" if e.lineno > 1 else "column"
        return None, f"not JSON ({e.msg} at {line} {e.colno})"
    except RecursionError:
        return None, "JSON nested too deep"
    if _SURROGATE_ESCAPE.search(text):
        try:
            field = _lone_surrogate(value)
        except RecursionError:
            return None, "JSON nested too deep"
        if field is not None:
            return None, f"{field} holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF)"
    return value, None


def _lone_surrogate(value: Any, field: str = "the record") -> str | None:
    """Where in ``value`` a string holds a lone surrogate (a top-level field named), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for k, v in items:
        name = f"`{k}`" if field == "the record" and isinstance(k, str) and k.isidentifier() \
            else field
        if _lone_surrogate(k, name) or _lone_surrogate(v, name):
            return name
    return None


def record_document(record: Any, key: str, where: str, path: str, fields: Fields,
                    position: int = 0) -> Document:
    """A parsed record as a ``Document``, or a ``failed`` one saying what is wrong with it."""
    if not isinstance(record, dict):
        return Document(key, where, None, path, status=FAILED, reason="read: not a JSON object",
                        position=position)
    doc_id, text = record.get(fields.id), record.get(fields.text)
    if doc_id is None or doc_id == "":
        return Document(key, where, None, path, status=FAILED,
                        reason=f"read: no `{fields.id}` field", position=position)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        # a float (NaN: 'nan') or a list would become an id no one can find again
        return Document(key, where, None, path, status=FAILED,
                        reason=f"read: `{fields.id}` is not a string or an integer",
                        position=position)
    doc_id = str(doc_id)
    if not isinstance(text, str):
        return Document(key, doc_id, None, path, status=FAILED,
                        reason=f"read: `{fields.text}` is missing or not a string",
                        position=position)
    lang = record.get(fields.lang) or record.get("language")
    rest = {k: v for k, v in record.items()
            if k not in (fields.id, fields.text, fields.lang, "language")}
    meta = json.dumps(rest, ensure_ascii=False, default=str) if rest else None
    return Document(key, doc_id, text, path, lang=str(lang) if lang else None, meta=meta,
                    position=position)


def _buffered_lines(raw_file, path: str) -> io.BufferedReader:
    """A line reader over a (possibly remote, possibly compressed) file.

    Reads from the store in large blocks before decompressing, and buffers again after: remote
    files and decompressors read small pieces, and some cannot read lines at all.
    """
    f = io.BufferedReader(raw_file, buffer_size=4 << 20)
    codec = fsspec.utils.infer_compression(path)
    if codec:
        # A small buffer after decompression: a truncated stream loses at most its last 64 KB.
        f = io.BufferedReader(fsspec.compression.compr[codec](f, mode="rb"), buffer_size=1 << 16)
    return f


def cdm_document(record: Any, key: str, where: str, path: str, fields: Fields,
                 position: int = 0) -> Document:
    """A DT4H CDM document as a ``Document`` (its metadata kept, as ``{"record_metadata":
    ...}``), or a ``failed`` one naming the invalid field."""
    try:
        doc_id, text, lang, metadata = record_fields(record)
    except CdmError as e:
        return Document(key, where, None, path, status=FAILED, reason=f"read: {e}",
                        position=position)
    meta = json.dumps({"record_metadata": metadata}, ensure_ascii=False, default=str)
    return Document(key, doc_id, text, path, lang=lang, meta=meta, position=position)


def read_cdm(task: ReadTask, fields: Fields) -> Iterator[Document]:
    """A ``.json`` file's CDM document (an empty text is read from the ``.txt`` file beside
    it); any other file, JSON Lines of CDM documents."""
    if not task.path.lower().endswith(".json"):
        yield from read_jsonl(task, fields, cdm_document)
        return
    base = posixpath.basename(task.path)
    with fsspec.open(task.path, "rb") as f:
        text, reason = _decode(f.read())
    if text is not None:
        record, reason = parse_json(text)
        if reason is None:
            doc = cdm_document(record, task.path, base, task.path, fields)
            if doc.text == "" and doc.status != FAILED:
                doc = _sibling_text(doc, text_file_of(task.path))
            yield doc
            return
    yield Document(task.path, base, None, task.path, status=FAILED, reason=f"read: {reason}")


def _sibling_text(doc: Document, txt: str) -> Document:
    """``doc`` with the text of ``txt`` (a CDM record whose ``text`` is empty)."""
    try:
        with fsspec.open(txt, "rb") as f:
            text, reason = _decode(f.read())
    except FileNotFoundError:
        text, reason = None, f"CDM record: text is empty and {posixpath.basename(txt)} is missing"
    if text is None:
        return doc.with_(text=None, status=FAILED, reason=f"read: {reason}")
    return doc.with_(text=text)


def read_jsonl(task: ReadTask, fields: Fields, parse=record_document) -> Iterator[Document]:
    """Records of a JSON Lines file or of one byte range of it (lines starting in the range),
    each made a document by ``parse``."""
    base = posixpath.basename(task.path)
    with fsspec.open(task.path, "rb") as raw_file:
        f = _buffered_lines(raw_file, task.path)
        pos = task.start
        if pos > 0:
            f.seek(pos - 1)
            pos += len(f.readline()) - 1  # the line holding byte start-1 is the previous range's
        while task.end is None or pos < task.end:
            raw = f.readline()
            if not raw:
                break
            offset, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            where, key = f"{base}@{offset}", f"{task.path}@{offset}"
            line, reason = _decode(raw)
            if line is not None:
                record, reason = parse_json(line)
                if reason is None:
                    yield parse(record, key, where, task.path, fields, offset)
                    continue
            yield Document(key, where, None, task.path, status=FAILED, reason=f"read: {reason}",
                           position=offset)


def read_parquet(task: ReadTask, fields: Fields) -> Iterator[Document]:
    """Records of some row groups of a Parquet file, streamed in batches."""
    import pyarrow.parquet as pq

    base = posixpath.basename(task.path)
    with fsspec.open(task.path, "rb") as f:
        pf = pq.ParquetFile(f)
        row = sum(pf.metadata.row_group(i).num_rows for i in range(min(task.row_groups or (0,))))
        for batch in pf.iter_batches(batch_size=1024, row_groups=list(task.row_groups) or None):
            for record in batch.to_pylist():
                yield record_document(record, f"{task.path}#{row}", f"{base}#{row}", task.path,
                                      fields, row)
                row += 1


def read_task(task: ReadTask, fields: Fields) -> Iterator[Document]:
    """The documents of one piece of a file. A piece whose bytes are damaged (truncated or
    mislabelled compression, a damaged Parquet file) ends in one ``failed`` record; a storage
    or network error is raised so that the runner retries the read."""
    reader = {TXT: read_txt, JSONL: read_jsonl, PARQUET: read_parquet, CDM: read_cdm}
    read = Metrics.counter("documents", "read")
    PROGRESS.start()
    if task.size == 0 and task.fmt != TXT and fsspec.utils.infer_compression(task.path) \
            and fsspec.core.url_to_fs(task.path)[0].size(task.path) == 0:
        read.inc()  # not even a header: written by a job that died, or truncated to nothing
        yield Document(f"{task.path}@0!", posixpath.basename(task.path), None, task.path,
                       status=FAILED, reason="read: empty compressed file (0 bytes)")
        return
    try:
        for doc in reader[task.fmt](task, fields):
            read.inc()
            PROGRESS.add(read=1)
            yield doc
    except PermissionError:  # running again cannot help: the shard is a dead letter
        read.inc()
        yield Document(f"{task.path}@{task.start}!", posixpath.basename(task.path), None,
                       task.path, status=FAILED, reason=f"read: {NOT_READABLE}")
    except Exception as e:
        if not is_damaged_data(e):
            raise
        where = f"{posixpath.basename(task.path)}@{task.start}"
        Metrics.counter("documents", "unreadable_shards").inc()
        read.inc()
        yield Document(f"{task.path}@{task.start}!", where, None, task.path, status=FAILED,
                       reason=f"read: shard unreadable from here on ({type(e).__name__})",
                       position=1 << 62)


SHARDS = "shards"


class _CheckMarkers(beam.DoFn):
    """(bucket, shards) -> read tasks of the shards still to do; the shards themselves go to
    the ``shards`` output (their markers are written once their rows are committed)."""

    def __init__(self, input_format: str | None, resume: Resume) -> None:
        self._format, self._resume = input_format, resume

    def process(self, element: tuple[str, Iterable[Shard]]) -> Iterator:
        _, listed = element
        listed = sorted(listed, key=lambda s: s.url)
        todo = list(pending(listed, self._resume))
        Metrics.counter("shards", "listed").inc(len(listed))
        Metrics.counter("shards", "complete_skipped").inc(len(listed) - len(todo))
        Metrics.counter("shards", "to_do").inc(len(todo))
        for shard in todo:
            yield beam.pvalue.TaggedOutput(SHARDS, shard)
        yield from plan_reads(todo, self._format)


class ReadDocuments(beam.PTransform):
    """A pattern -> (``Document``s, ``Shard``s read): only shards that no earlier run over the
    same output completed. The pattern's roots are listed by workers in parallel, markers are
    checked a bucket at a time, and read tasks are spread over the workers; documents are not
    shuffled."""

    def __init__(self, pattern: str, resume: Resume, fields: Fields = Fields(),
                 input_format: str | None = None, split_bytes: int = SPLIT_BYTES) -> None:
        super().__init__()
        self._pattern, self._fields, self._format = pattern, fields, input_format
        self._split, self._resume = split_bytes, resume

    def expand(self, pbegin):
        fields, split, fmt, resume = self._fields, self._split, self._format, self._resume
        listed = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Roots" >> beam.FlatMap(expand_pattern)
            | "SpreadRoots" >> beam.Reshuffle()
            | "ListShards" >> beam.FlatMap(list_root, fmt)
            | "ByBucket" >> beam.WithKeys(resume.bucket)
            | "Buckets" >> beam.GroupByKey()
            | "CheckMarkers" >> beam.ParDo(_CheckMarkers(fmt, resume)).with_outputs(
                SHARDS, main="tasks")
        )
        documents = (
            listed.tasks
            | "SpreadTasks" >> beam.Reshuffle()
            | "SplitFiles" >> beam.FlatMap(split_task, split)
            | "SpreadPieces" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(read_task, fields)
        )
        return documents, listed[SHARDS]
