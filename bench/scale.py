"""Archive-scale benchmark: the real job over N notes, its speed and its memory.

``python -m bench.scale --notes 20000 --model ../shared/models/probe-es/procedure [--workers 1]``
builds N notes from the real E3C notes of ``../shared/corpora/e3c-layer3`` (es, en and it
interleaved, ids made unique when the corpus is cycled) as JSON Lines shards of 500, runs the
real ``python -m pipeline.run`` over them as a subprocess (DirectRunner, ``--direct_num_workers
W``) and prints, as JSON:

- documents/s of the whole process (wall time from start to exit);
- documents/s of the CPU side: wall time less the model's own time (the sum of RunInference's
  batch latencies that the job records in ``run.json``, divided among the worker processes);
- peak RSS of the process tree (the launcher and its worker processes, sampled every 0.1 s).

Several ``--notes`` values in one call run one after the other, so memory can be compared.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("CLINICAL_NER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
E3C = SHARED / "corpora" / "e3c-layer3"
REPO = Path(__file__).resolve().parents[1]


def notes(n: int) -> list[dict]:
    """``n`` real notes, es/en/it interleaved; cycled with unique ids past the corpus."""
    corpora = []
    for lang in ("es", "en", "it"):
        with gzip.open(E3C / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
            corpora.append([json.loads(line) for line in f])
    mixed = [r for group in itertools.zip_longest(*corpora) for r in group if r]
    out = []
    for i in range(n):
        r = mixed[i % len(mixed)]
        out.append({"id": f"{r['id']}~{i // len(mixed)}", "text": r["text"], "lang": r["lang"]})
    return out


def write_shards(records: list[dict], folder: Path, size: int = 500) -> None:
    folder.mkdir(parents=True)
    for k in range(0, len(records), size):
        with open(folder / f"notes-{k // size:05d}.jsonl", "w", encoding="utf-8") as f:
            for r in records[k:k + size]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _tree_rss(root: int) -> int:
    """Resident memory of a process and all its descendants, in KiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_job(input_dir: Path, out: Path, tasks: Path, workers: int, extra: list[str]) -> dict:
    """The real job as a subprocess: wall time, peak RSS of its tree, its run record."""
    cmd = [sys.executable, "-m", "pipeline.run", "--input", str(input_dir), "--output", str(out),
           "--tasks", str(tasks), "--direct_num_workers", str(workers), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"the job failed ({proc.returncode}):\n{err[-3000:]}")
    record = json.loads((out / "run.json").read_text())
    return {"wall": wall, "peak_rss_kib": peak[0], "record": record}


def measure(n: int, model: str, workers: int, extra: list[str], root: Path) -> dict:
    """One measurement over ``n`` notes."""
    src = root / f"in-{n}"
    if not src.exists():
        write_shards(notes(n), src)
    tasks = root / "tasks.yaml"
    tasks.write_text(f"tasks:\n  procedure:\n    kind: hf\n    model: {Path(model).resolve()}\n"
                     "    languages: [es, en, it]\n")
    out = root / f"out-{n}-{workers}"
    if out.exists():
        shutil.rmtree(out)
    result = run_job(src, out, tasks, workers, extra)
    record = result["record"]
    latency = sum(d["sum"] for name, d in record["distributions"].items()
                  if name.endswith("inference_batch_latency_micro_secs")) / 1e6
    docs = record["counts"].get("documents/read", 0)
    cpu_side = result["wall"] - latency / workers
    return {"notes": n, "workers": workers, "documents": docs,
            "annotated": record["counts"].get("documents/annotated", 0),
            "wall_s": round(result["wall"], 1), "model_s": round(latency, 1),
            "docs_per_s": round(docs / result["wall"], 1),
            "cpu_side_docs_per_s": round(docs / cpu_side, 1),
            "peak_rss_mib": round(result["peak_rss_kib"] / 1024)}


def main() -> None:
    """Print the figures as JSON, one object per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notes", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--model", default=str(SHARED / "models" / "probe-es" / "procedure"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--keep", type=Path, default=None, help="Keep inputs and outputs here.")
    args, extra = ap.parse_known_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    for n in args.notes:
        for w in args.workers:
            print(json.dumps(measure(n, args.model, w, extra, root)), flush=True)


if __name__ == "__main__":
    main()
