"""What a run leaves behind besides its outputs: the metrics table, ``OUT/run.json``, and the
job configuration that completion markers record."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import fsspec

from transforms.formats.cdm import RunInfo
from transforms.core.spec import LinkerSpec, TaskSpec
from transforms.io.storage import store_version, tree_digest, write_atomically
from transforms.io.terminology import digest


@dataclass
class RunMetrics:
    """A job's Beam counters and distributions, each summed over the steps that report it."""

    counters: dict[str, int] = field(default_factory=dict)
    distributions: dict[str, dict[str, float]] = field(default_factory=dict)


def metric_totals(result) -> RunMetrics | None:
    """The job's metrics, or ``None`` if the runner reports none."""
    try:
        query = result.metrics().query()
    except (AttributeError, NotImplementedError, KeyError):
        return None
    totals = RunMetrics()
    for c in query.get("counters", ()):
        name = f"{c.key.metric.namespace}/{c.key.metric.name}"
        totals.counters[name] = totals.counters.get(name, 0) + int(c.committed or 0)
    for d in query.get("distributions", ()):
        r = d.committed
        if r is None or not r.count:
            continue
        name = f"{d.key.metric.namespace}/{d.key.metric.name}"
        old = totals.distributions.get(name)
        if old:
            r_count, r_sum = old["count"] + r.count, old["sum"] + r.sum
            r_min, r_max = min(old["min"], r.min), max(old["max"], r.max)
        else:
            r_count, r_sum, r_min, r_max = r.count, r.sum, r.min, r.max
        totals.distributions[name] = {"count": r_count, "sum": r_sum, "min": r_min,
                                      "max": r_max, "mean": round(r_sum / r_count, 3)}
    totals.counters = dict(sorted(totals.counters.items()))
    totals.distributions = dict(sorted(totals.distributions.items()))
    return totals


def metrics_table(totals: RunMetrics | None) -> str:
    """Counters, then distributions (count, mean, min, max), as aligned text."""
    if totals is None:
        return "(no metrics from this runner)"
    names = [*totals.counters, *totals.distributions]
    width = max((len(k) for k in names), default=0)
    lines = [f"  {'counter':<{width}}  {'value':>12}"]
    lines += [f"  {k:<{width}}  {v:>12,}" for k, v in totals.counters.items()]
    if totals.distributions:
        lines.append(f"  {'distribution':<{width}}  {'count':>12}  {'mean':>12}  {'min':>10}"
                     f"  {'max':>10}")
        lines += [f"  {k:<{width}}  {d['count']:>12,}  {d['mean']:>12,.1f}  {d['min']:>10,}"
                  f"  {d['max']:>10,}" for k, d in totals.distributions.items()]
    return "\n".join(lines)


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


def model_version(location: str, revision: str | None = None) -> dict[str, Any]:
    """A fingerprint of a model: for a local one its files' names and the SHA-256 of their
    bytes (cached by file identity); for a remote one (gs://, s3://) its objects' names, sizes
    and checksums; for a hub id the commit it was pinned to (``revision``)."""
    path = Path(location)
    if not path.exists():
        if "://" not in location or location.startswith("hf://"):
            return {"location": location, "revision": revision,
                    "fingerprint": (revision or "unpinned")[:16]}
        version, size = store_version(*fsspec.core.url_to_fs(location))
        return {"location": location, "bytes": size,
                "fingerprint": hashlib.sha1(version.encode()).hexdigest()[:16]}
    digest, size = tree_digest(path)
    return {"location": location, "fingerprint": digest[:16], "bytes": size}


OPT_IN_OPTIONS = ("write", "note_id_field", "snippet_chars")  # recorded when --write is given
# The options that change which spans a document gets (a change redoes every shard).
OUTPUT_OPTIONS = ("language", "min_lang_confidence", "reference_compat", "max_tokens", "overlap",
                  "precision", "backend", "input_format", "id_field", "text_field",
                  "lang_field")


def job_config(opts: Any, specs: Mapping[str, TaskSpec],
               precisions: Mapping[str, str] | None = None,
               linkers: Mapping[str, LinkerSpec] | None = None) -> dict[str, Any]:
    """What a completed shard's output depends on: task file, model versions, options, the
    dtype ``--precision auto`` decided for each task on this machine (``precisions``), and
    each linker's terminology (its content) and bi-encoders."""
    return {
        "task_file": opts.tasks,
        "tasks": {name: {"kind": s.kind, "languages": list(s.languages),
                         "model": model_version(s.model, s.revision), "encoder": s.encoder,
                         "tokenizer": s.tokenizer, "heads": dict(s.heads),
                         "labels": {str(h): list(v) for h, v in s.labels.items()},
                         **({"qualifies": dict(s.qualifies)} if s.qualifies else {}),
                         **({"demonstration": True} if s.demonstration else {})}
                  for name, s in sorted(specs.items())},
        "options": {**{k: getattr(opts, k) for k in OUTPUT_OPTIONS},
                    **({k: getattr(opts, k) for k in OPT_IN_OPTIONS} if opts.write else {}),
                    **({"detect_language": True} if opts.detect_language else {})},
        **({"precision_decided": dict(sorted(precisions.items()))} if precisions else {}),
        **({"linkers": {name: {"labels": list(spec.labels), "terminology": spec.terminology,
                               "system": spec.system,
                               "content": digest(spec.terminology)[:16],
                               "filters": {k: list(v) for k, v in spec.filters.items()},
                               "models": {lang: model_version(m)["fingerprint"]
                                          for lang, m in spec.models.items()},
                               "ngrams": spec.ngrams, "top": spec.top,
                               "min_score": spec.thresholds()}
                        for name, spec in sorted(linkers.items())}} if linkers else {}),
    }


def run_info(opts: Any, config: Mapping[str, Any], started: datetime) -> RunInfo:
    """What the CDM and NOTE_NLP outputs say of this run: code version, start, each task's
    model (location, pinned revision or fingerprint)."""
    code = code_version()
    version = (code["package"] or "unknown") + (f"+{code['commit'][:10]}" if code["commit"]
                                                else "")
    models = {name: t["model"] for name, t in config["tasks"].items()}
    return RunInfo(
        version=version, started=started,
        models={n: m.get("revision") or m["fingerprint"] for n, m in models.items()},
        locations={n: m["location"] for n, m in models.items()},
        note_id_field=opts.note_id_field, snippet_chars=opts.snippet_chars)


def write_run_record(totals: Mapping[str, int], output: str, run_id: str,
                     options: Mapping[str, Any], config: Mapping[str, Any], started: datetime
                     ) -> dict:
    """Write ``OUT/run.json`` (aside, then moved into place) from the run's own counts, when
    the job ends (it is the job's last step, on Dataflow too), and return it."""
    ended = now()
    seconds = (ended - started).total_seconds()
    counts = dict(sorted((k, v) for k, v in totals.items() if v))
    documents = counts.get("documents/read", 0)
    record = {
        "run_id": run_id,
        "started": started.isoformat(), "ended": ended.isoformat(),
        "seconds": round(seconds, 2),
        "code_version": code_version(),
        "options": {k: v for k, v in options.items() if v is not None},
        "config": dict(config),
        "counts": counts,
        "distributions": {},
        "throughput": {"documents": documents,
                       "documents_per_s": round(documents / seconds, 2) if seconds else None},
    }
    _write(output, record)
    return record


def record_check(totals: Mapping[str, int], output: str, run_id: str,
                 options: Mapping[str, Any], config: Mapping[str, Any], started: datetime
                 ) -> None:
    """A rerun that found nothing to do: ``OUT/run.json`` goes on describing the last run that
    did work (the report shows it), with this check added as ``last_check``; where there is no
    such record, this run's is written."""
    path = output.rstrip("/") + "/run.json"
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            record = json.load(f)
    except (FileNotFoundError, ValueError):
        write_run_record(totals, output, run_id, options, config, started)
        return
    record["last_check"] = {"run_id": run_id, "at": now().isoformat(),
                            "counts": dict(sorted(totals.items())),
                            "result": "nothing to do: every input shard is complete"}
    _write(output, record)


def finish_run_record(output: str, metrics: RunMetrics | None) -> dict:
    """Add the runner's metrics (counters the data cannot give, distributions) to the record
    the job wrote (local runs, which wait for the job)."""
    with fsspec.open(output.rstrip("/") + "/run.json", "rt", encoding="utf-8") as f:
        record = json.load(f)
    if metrics is not None:
        record["counts"] = dict(sorted({**metrics.counters, **record["counts"]}.items()))
        record["distributions"] = metrics.distributions
    _write(output, record)
    return record


def _write(output: str, record: Mapping[str, Any]) -> None:
    write_atomically(output.rstrip("/") + "/run.json",
                     json.dumps(record, indent=2, default=str).encode("utf-8"))


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(timezone.utc)
