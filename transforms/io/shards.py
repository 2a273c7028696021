"""Input shards (files): listing them, and which ones a run over the same output completed.

A shard is complete when ``OUT/_shards/<bucket>/<shard id>.<state>.json`` exists. The shard id
names the file (a hash of its URL; its first two characters are the bucket); the state hashes
the file's version (size and the store's checksum, or its modification time) together with the
job's configuration (task file, model versions, options that change spans). So a rerun skips a
shard only if neither the file nor the configuration changed since its marker was written;
``--force`` redoes every shard. Markers are checked a bucket at a time (one listing each), so
no worker ever holds the markers of the whole output.

A marker is written only after the run's outputs are committed. Beside it, the shard's index
(``<bucket>/<shard id>.json``) names the output parts that hold the shard's rows: a later run
that redoes the shard (its file or the configuration changed, its marker was deleted,
``--force``) removes them from exactly those parts. Listing is streamed: a pattern is expanded into roots (files, folders) that workers
list in parallel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Iterator, Mapping

import fsspec

from transforms.core.records import ANNOTATED, FAILED, SKIPPED, Shard
from transforms.io.storage import file_version, is_local, write_atomically

MARKERS = "_shards"
LOG = logging.getLogger("pipeline")
_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl",
             ".parquet": "parquet", ".json": "cdm"}
FORMATS = ("txt", "jsonl", "parquet", "cdm")


class InputError(ValueError):
    """An ``--input`` that names no readable files, with what to fix."""


def text_file_of(path: str) -> str | None:
    """The ``.txt`` file beside a CDM ``.json`` document, which holds its text when the record's
    ``text`` is empty; None for other files."""
    return path[: -len(".json")] + ".txt" if path.lower().endswith(".json") else None


def input_format(path: str, forced: str | None = None) -> str | None:
    """The format a file name says (``txt``/``jsonl``/``parquet``; ``.json``: a DT4H CDM
    document, ``cdm``), or ``forced``."""
    if forced:
        return forced
    name = path.lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def canonical(path: str) -> str:
    """A local input root as one spelling names it whatever the command line said (``in//``,
    ``./in``, a symbolic link to the folder or to the file's folder): a file's identity, and so
    its shard and its earlier rows, follow from it. A file keeps its own name (a linked file's
    id is the link's name)."""
    if os.path.isdir(path):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))


def expand_pattern(pattern: str) -> list[str]:
    """The roots an ``--input`` names: the folders and files its glob matches (URLs; local
    ones ``canonical``)."""
    fs, _, paths = fsspec.get_fs_token_paths(pattern)
    return sorted({canonical(p) if is_local(fs) else fs.unstrip_protocol(p) for p in paths})


def walk(fs, path: str) -> Iterator[tuple[str, dict[str, Mapping[str, Any]]]]:
    """``(folder, {name: info})`` of every folder under ``path``, depth first, in name order,
    each folder once (a link back up is not followed again). A folder that cannot be listed
    is a set-up error: fsspec's own walk leaves it out without a word, and its files with it."""
    seen: set[str] = set()
    todo = [path.rstrip("/")]
    while todo:
        folder = todo.pop()
        real = os.path.realpath(folder) if is_local(fs) else folder
        if real in seen:
            continue
        seen.add(real)
        try:
            listing = fs.ls(folder, detail=True)
        except FileNotFoundError:  # removed while listing: nothing in it to lose
            continue
        except OSError as e:
            raise InputError(f"cannot list {folder!r} ({type(e).__name__}): its files would be "
                             "left out; fix its permissions or leave it out of --input") from e
        files, folders = {}, []
        for info in listing:
            name = info["name"].rstrip("/")
            if name == folder:
                continue
            if info.get("type") == "directory":
                folders.append(name)
            else:
                files[posixpath.basename(name)] = info
        yield folder, files
        todo.extend(sorted(folders, reverse=True))


def list_root(root: str, forced: str | None = None) -> Iterator[Shard]:
    """The input files under ``root`` (a folder, walked folder by folder, or one file); an
    ``X.txt`` beside an ``X.json`` is that CDM document's text, not a document of its own, and
    its version is part of the ``.json`` shard's (editing either redoes the document)."""
    fs, path = fsspec.core.url_to_fs(root)

    def shard(p: str, info: Mapping[str, Any], text: Mapping[str, Any] | None) -> Shard:
        version = file_version(info) + (f";text:{file_version(text)}" if text else "")
        size = int(info.get("size") or 0) + int((text or {}).get("size") or 0)
        return Shard(p if is_local(fs) else fs.unstrip_protocol(p), size, version)

    if fs.isdir(path):
        for folder, files in walk(fs, path):
            texts = {text_file_of(name) for name in files} - {None}
            for name, info in sorted(files.items()):
                full = posixpath.join(folder, name)
                if input_format(full, forced) and name not in texts:
                    yield shard(full, info, files.get(text_file_of(name)))
    elif fs.isfile(path):
        if input_format(path, forced) is None:
            raise InputError(f"{root!r}: unknown input format: name it .txt, .jsonl[.gz|.zst], "
                             ".parquet or .json (DT4H CDM), or pass --input_format")
        text = text_file_of(path)
        yield shard(path, fs.info(path), fs.info(text) if text and fs.exists(text) else None)


def check_output_outside(pattern: str, output: str) -> None:
    """An output inside an input folder would be read back as input by every later run: a
    set-up error."""
    out_fs, out_path = fsspec.core.url_to_fs(output)
    if is_local(out_fs):
        out_path = os.path.realpath(out_path)
    for root in expand_pattern(pattern):
        fs, path = fsspec.core.url_to_fs(root)
        if type(fs) is not type(out_fs) or not fs.isdir(path):
            continue
        path = os.path.realpath(path) if is_local(fs) else path.rstrip("/")
        if out_path == path or out_path.startswith(path + "/"):
            raise InputError(f"--output {output!r} is inside --input {root!r}: its files would "
                             "be read back as input by the next run; write it elsewhere")


def list_files(pattern: str, forced: str | None = None) -> Iterator[Shard]:
    """Every input file a pattern names (streamed)."""
    for root in expand_pattern(pattern):
        yield from list_root(root, forced)


def _digest(*parts: object, n: int = 16) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()[:n]


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able job configuration."""
    return _digest(json.dumps(config, sort_keys=True, default=str))


@dataclass(frozen=True)
class Resume:
    """Where the markers live and what a marker must match to let a shard be skipped."""

    output: str
    config: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False

    @cached_property
    def fingerprint(self) -> str:
        """The configuration's hash (computed once: every shard's marker name uses it)."""
        return config_fingerprint(self.config)

    @property
    def root(self) -> str:
        return f"{self.output.rstrip('/')}/{MARKERS}"

    def marker(self, shard: Shard) -> str:
        """The marker file (``<bucket>/<id>.<state>.json``) that says ``shard`` is complete in
        this configuration."""
        sid = _digest(shard.url)
        return f"{sid[:2]}/{sid}.{_digest(shard.size, shard.version, self.fingerprint)}.json"

    def bucket(self, shard: Shard) -> str:
        """The marker folder of ``shard``."""
        return self.marker(shard).split("/", 1)[0]


def bucket_markers(resume: Resume, bucket: str) -> tuple[dict[str, list[str]], set[str]]:
    """One bucket's marker names (``<bucket>/<file>``) by shard id, and the shard ids that have
    an index (one listing, no reads)."""
    fs, path = fsspec.core.url_to_fs(f"{resume.root}/{bucket}")
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return {}, set()
    found: dict[str, list[str]] = {}
    indexed: set[str] = set()
    for name in (posixpath.basename(p) for p in names):
        if name.endswith(".json") and name.count(".") == 2:
            found.setdefault(name.split(".", 1)[0], []).append(f"{bucket}/{name}")
        elif name.endswith(".json") and name.count(".") == 1:
            indexed.add(name.split(".", 1)[0])
    return found, indexed


def pending(shards: Iterable[Shard], resume: Resume) -> Iterator[Shard]:
    """The shards to (re)do; each carries the markers of its earlier states, to replace, and
    the parts that hold its rows from earlier runs, to remove (read from its index)."""
    listings: dict[str, tuple[dict[str, list[str]], set[str]]] = {}
    for shard in shards:
        name = resume.marker(shard)
        bucket, file = name.split("/")
        if bucket not in listings:
            listings[bucket] = bucket_markers(resume, bucket)
        markers, indexed = listings[bucket]
        sid = file.split(".", 1)[0]
        mine = markers.get(sid, [])
        if name in mine and not resume.force:
            continue
        earlier = read_marker(resume, f"{bucket}/{sid}.json").get("parts", []) \
            if sid in indexed else []
        yield shard.with_(stale=tuple(mine), earlier=tuple(earlier))


def shard_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """A shard's documents per final state and spans, from its summed document counts."""
    out = {"documents": 0, ANNOTATED: 0, SKIPPED: 0, FAILED: 0, "spans": 0}
    for name, n in counts.items():
        out[name] = out.get(name, 0) + n
    return out


def write_marker(shard: Shard, counts: Mapping[str, int], parts: Iterable[str], resume: Resume,
                 run_id: str, completed: str) -> str:
    """Record ``shard`` as complete (then drop markers of its earlier states); its name."""
    name = resume.marker(shard)
    record = {"source": shard.url, "size": shard.size, "version": shard.version,
              "run_id": run_id, "completed": completed, "counts": shard_counts(counts),
              "parts": sorted(set(parts)), "config_fingerprint": resume.fingerprint,
              "config": resume.config}
    index = {"source": shard.url, "parts": record["parts"], "run_id": run_id}
    write_atomically(f"{resume.root}/{name.split('.', 1)[0]}.json",
                     json.dumps(index).encode("utf-8"))
    write_atomically(f"{resume.root}/{name}",
                     json.dumps(record, indent=1, default=str).encode("utf-8"))
    fs, root = fsspec.core.url_to_fs(resume.root)
    for old in shard.stale:
        if old != name:
            fs.rm(posixpath.join(root, old))
    return name


def read_marker(resume: Resume, name: str) -> dict[str, Any]:
    """A marker's record (``{}`` if it is gone)."""
    fs, root = fsspec.core.url_to_fs(resume.root)
    try:
        return json.loads(fs.cat(posixpath.join(root, name)))
    except FileNotFoundError:
        return {}
