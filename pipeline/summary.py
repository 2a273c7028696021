"""What a run leaves behind besides its outputs: the counters table and ``OUT/run.json``."""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import fsspec

from pipeline.tasks import TaskSpec
from transforms.shards import file_version
from transforms.storage import write_atomically


def counter_totals(result) -> dict[str, int] | None:
    """The job's Beam counters summed over steps, or ``None`` if the runner has none."""
    try:
        counters = result.metrics().query()["counters"]
    except (AttributeError, NotImplementedError, KeyError):
        return None
    totals: dict[str, int] = {}
    for c in counters:
        name = f"{c.key.metric.namespace}/{c.key.metric.name}"
        totals[name] = totals.get(name, 0) + int(c.committed or 0)
    return dict(sorted(totals.items()))


def counters_table(totals: Mapping[str, int] | None) -> str:
    """Counters as an aligned two-column table."""
    if totals is None:
        return "(no metrics from this runner)"
    width = max((len(k) for k in totals), default=0)
    return "\n".join(f"  {k:<{width}}  {v:>10,}" for k, v in totals.items())


def code_version() -> dict[str, str | None]:
    """The package version and, in a git checkout, the commit."""
    try:
        version = metadata.version("clinical-ner-pipeline")
    except metadata.PackageNotFoundError:
        version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": version, "commit": commit}


def model_version(location: str) -> dict[str, Any]:
    """A fingerprint of a model: for a local one its file names, sizes and first 64 KiB of
    each; for a remote one (gs://, s3://) its objects' names, sizes and checksums; a hub id
    stands for itself."""
    path = Path(location)
    if not path.exists():
        if "://" not in location:
            return {"location": location}
        fs, root = fsspec.core.url_to_fs(location)
        infos = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
        digest = hashlib.sha1("".join(
            f"{posixpath.relpath(name, root)}:{info.get('size')}:{file_version(info)}\n"
            for name, info in sorted(infos.items())).encode())
        return {"location": location, "fingerprint": digest.hexdigest()[:16],
                "bytes": sum(int(i.get("size") or 0) for i in infos.values())}
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.relative_to(path.parent)}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(1 << 16))
    return {"location": location, "fingerprint": digest.hexdigest()[:16],
            "bytes": sum(f.stat().st_size for f in files)}


# The options that change which spans a document gets (a change redoes every shard).
OUTPUT_OPTIONS = ("language", "min_lang_confidence", "reference_compat", "max_tokens", "overlap",
                  "precision", "input_format", "id_field", "text_field", "lang_field")


def job_config(opts: Any, specs: Mapping[str, TaskSpec]) -> dict[str, Any]:
    """What a completed shard's output depends on: task file, model versions, options."""
    return {
        "task_file": opts.tasks,
        "tasks": {name: {"kind": s.kind, "languages": list(s.languages),
                         "model": model_version(s.model), "encoder": s.encoder,
                         "tokenizer": s.tokenizer, "heads": dict(s.heads),
                         "labels": {str(h): list(v) for h, v in s.labels.items()}}
                  for name, s in sorted(specs.items())},
        "options": {k: getattr(opts, k) for k in OUTPUT_OPTIONS},
    }


def write_run_record(output: str, run_id: str, options: Mapping[str, Any],
                     config: Mapping[str, Any], started: datetime, ended: datetime,
                     totals: Mapping[str, int] | None) -> dict:
    """Write ``OUT/run.json`` (aside, then moved into place) and return it."""
    seconds = (ended - started).total_seconds()
    documents = (totals or {}).get("documents/read", 0)
    record = {
        "run_id": run_id,
        "started": started.isoformat(), "ended": ended.isoformat(),
        "seconds": round(seconds, 2),
        "code_version": code_version(),
        "options": {k: v for k, v in options.items() if v is not None},
        "config": dict(config),
        "counts": dict(totals or {}),
        "throughput": {"documents": documents,
                       "documents_per_s": round(documents / seconds, 2) if seconds else None},
    }
    write_atomically(output.rstrip("/") + "/run.json",
                     json.dumps(record, indent=2, default=str).encode("utf-8"))
    return record


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(timezone.utc)
