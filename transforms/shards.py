"""Incremental runs: which input shards (files) a run over the same output already completed.

A shard is complete when ``OUT/_shards/<shard id>.<state>.json`` exists. The shard id names the
file (a hash of its URL); the state hashes the file's version (size and the store's checksum,
or its modification time) together with the job's configuration (task file, model versions,
options that change spans). So a rerun skips a shard only if neither the file nor the
configuration changed since its marker was written; ``--force`` redoes every shard.

A marker is written only after the run's outputs are committed, and a redone shard's earlier
rows are removed from the outputs when the new ones land, so a shard's rows are never lost or
doubled, whatever the point a run stopped at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

import fsspec

from transforms.records import ANNOTATED, FAILED, SKIPPED, Shard
from transforms.storage import write_atomically

MARKERS = "_shards"
LOG = logging.getLogger("pipeline")
# The keys of fsspec file infos that identify a version, most specific first: GCS checksums,
# S3/HTTP ETags, modification times (local disks and others).
_VERSION_KEYS = ("md5Hash", "crc32c", "ETag", "etag", "generation", "mtime", "LastModified",
                 "updated", "created")


def file_version(info: Mapping[str, Any]) -> str:
    """What identifies a file's content on its store, from an fsspec info dict."""
    for key in _VERSION_KEYS:
        if info.get(key) not in (None, ""):
            return f"{key}={info[key]}"
    return ""


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
        """The marker file name that says ``shard`` is complete in this configuration."""
        return f"{_digest(shard.url)}.{_digest(shard.size, shard.version, self.fingerprint)}.json"


def existing_markers(root: str) -> dict[str, list[str]]:
    """Marker file names under ``root``, by shard id (one listing, no reads)."""
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return {}
    found: dict[str, list[str]] = {}
    for name in (posixpath.basename(p) for p in fs.ls(path, detail=False)):
        if name.endswith(".json") and name.count(".") == 2:
            found.setdefault(name.split(".", 1)[0], []).append(name)
    return found


def pending(shards: Iterable[Shard], resume: Resume) -> list[Shard]:
    """The shards to (re)do; each carries the markers of earlier states it will replace."""
    markers = existing_markers(resume.root)
    todo, done = [], 0
    for shard in shards:
        name = resume.marker(shard)
        mine = markers.get(name.split(".", 1)[0], [])
        if name in mine and not resume.force:
            done += 1
            continue
        todo.append(shard.with_(stale=tuple(mine)))
    LOG.info("input: %d shards, %d complete (skipped), %d to do", done + len(todo), done,
             len(todo))
    return todo


def shard_counts(documents: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Documents per final state and spans of one shard, from its document rows."""
    counts = {"documents": 0, ANNOTATED: 0, SKIPPED: 0, FAILED: 0, "spans": 0}
    for row in documents:
        counts["documents"] += 1
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        counts["spans"] += int(row["n_spans"] or 0)
    return counts


def write_marker(shard: Shard, counts: Mapping[str, int], resume: Resume, run_id: str,
                 completed: str) -> str:
    """Record ``shard`` as complete (then drop markers of its earlier states); its name."""
    name = resume.marker(shard)
    record = {"source": shard.url, "size": shard.size, "version": shard.version,
              "run_id": run_id, "completed": completed, "counts": dict(counts),
              "config_fingerprint": resume.fingerprint, "config": resume.config}
    write_atomically(f"{resume.root}/{name}",
                     json.dumps(record, indent=1, default=str).encode("utf-8"))
    fs, root = fsspec.core.url_to_fs(resume.root)
    for old in shard.stale:
        if old != name:
            fs.rm(posixpath.join(root, old))
    return name
