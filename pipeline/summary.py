"""What a run leaves behind besides its outputs: the counters table and ``OUT/run.json``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from pipeline.tasks import TaskSpec
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
    """A fingerprint of a local model (file names, sizes, first 64 KiB of each), or the
    location alone for hub ids and remote URLs."""
    path = Path(location)
    if not path.exists():
        return {"location": location}
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.relative_to(path.parent)}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(1 << 16))
    return {"location": location, "fingerprint": digest.hexdigest()[:16],
            "bytes": sum(f.stat().st_size for f in files)}


def write_run_record(output: str, options: Mapping[str, Any], specs: Mapping[str, TaskSpec],
                     started: datetime, ended: datetime, totals: Mapping[str, int] | None
                     ) -> dict:
    """Write ``OUT/run.json`` (aside, then moved into place) and return it."""
    seconds = (ended - started).total_seconds()
    documents = (totals or {}).get("documents/read", 0)
    record = {
        "started": started.isoformat(), "ended": ended.isoformat(),
        "seconds": round(seconds, 2),
        "code_version": code_version(),
        "options": {k: v for k, v in options.items() if v is not None},
        "tasks": {name: {"kind": s.kind, "languages": list(s.languages),
                         "model": model_version(s.model),
                         **({"encoder": s.encoder} if s.encoder else {})}
                  for name, s in specs.items()},
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
