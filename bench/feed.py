"""Does the host keep one GPU busy? ``python -m bench.feed`` proves the model layout here, on
the CPU, with a stand-in GPU (``bench/standin.py``).

The real job (DirectRunner, E3C notes, the job's GPU defaults) runs with each task's model
replaced by the stand-in: one device lock for the whole machine, held a fixed time per real
token, plus a host launch cost per batch. First, per task count, the host's capacity is
measured with a device that costs nothing and a worker process per core (real tokens/s from
the first batch to the last); the device is then set to ``--device_share`` (half) of it, so a
host that never lets the device wait keeps it busy all the time. Each layout then runs with one
task and with two:

- ``shared``: one model copy per machine, every worker process calling it through Beam's
  ``large_model`` proxy, a process per core (the GPU default before issue 43);
- ``per_process``: a copy in each worker process, as many as the job starts with a GPU (two a
  core: while one waits on the device another prepares), the default;
- ``per_process_one_a_core``: the same with a process per core.

Every run takes the job's GPU path: the processes take turns on the device, one call (a group's
batches for one task) at a time (``transforms/inference/turns.py``).

It prints, per run: the device's busy share (busy seconds over first batch to last), notes/s,
batches and calls per group, bytes shipped across processes per group, and host milliseconds
per note in each step (on stderr as each run ends; then the table on stdout); as its last
line, one JSON object with each layout's busy share for one and for two tasks. ``--notes``
sizes the run (the default takes about twelve minutes on a 2-core machine); ``--smoke`` is a
tiny one (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu import DRY, REPO, e3c_notes, interleaved, save_models, write_notes
from bench.standin import ENV, Device, read_records

CORES = os.cpu_count() or 1
# the old default (one copy shared through Beam's proxy, a worker process per core) and the new
# (a copy per process, the job's own number of processes with a GPU: two a core)
LAYOUTS = {"shared": ("--large_model", "true", "--direct_num_workers", str(CORES)),
           "per_process": ("--large_model", "false"),
           "per_process_one_a_core": ("--large_model", "false", "--direct_num_workers",
                                      str(CORES))}
SHARED = Path(os.environ.get("CLINICAL_NER_SHARED", REPO.parent / "shared"))


def run_job(inputs: Path, tasks: Path, work: Path, device: Device, options: tuple[str, ...],
            timeout: float) -> dict:
    """One stand-in job: its wall time and the stand-in's records."""
    folder = Path(device.folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, ENV: json.dumps(device.__dict__)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.standin", "--input", str(inputs),
                           "--output", str(out), "--tasks", str(tasks), *options],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"bench.feed: the job failed ({proc.returncode}):\n"
                         + "\n".join(proc.stderr.strip().splitlines()[-5:]))
    counts = json.loads((out / "run.json").read_text()).get("counts", {})
    rec = read_records(folder)
    if "--direct_num_workers" in options:
        rec["processes"] = int(options[options.index("--direct_num_workers") + 1])
    return {"wall_s": wall, "annotated": counts.get("documents/annotated"), **rec}


def row(layout: str, tasks: int, notes: int, rec: dict) -> dict:
    """What one run shows."""
    groups = rec["calls"] / tasks  # one call per group and task
    host = {k: round(v / notes, 2) for k, v in rec["stage_ms"].items()
            if v and not k.startswith("ref_")}
    shipped = (rec["bytes_in"] + rec["bytes_out"]) / groups if layout == "shared" else 0
    return {"layout": layout, "tasks": tasks, "notes": notes, "processes": rec["processes"],
            "device_busy": round(rec["busy_share"], 3),
            "notes_per_s": round(notes / rec["inferring_s"], 1),
            "wall_s": round(rec["wall_s"], 1), "model_copies": rec["models"],
            "batches_per_group": round(rec["batches"] / groups, 1),
            "calls_per_group": round(rec["calls"] / groups, 2),
            "mb_shipped_per_group": round(shipped / 2**20, 2),
            "host_ms_per_note": host, "annotated": rec["annotated"]}


def table(rows: list[dict]) -> str:
    """The runs side by side, as a Markdown table."""
    head = ("| layout | tasks | processes | device busy | notes/s | batches/group | calls/group "
            "| MB shipped/group | host ms/note (top steps) |\n" + "|---" * 9 + "|")
    lines = [head]
    for r in rows:
        top = sorted(r["host_ms_per_note"].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {r['layout']} | {r['tasks']} | {r['processes']} | "
                     f"{r['device_busy']:.3f} | {r['notes_per_s']:,.0f} | "
                     f"{r['batches_per_group']} | {r['calls_per_group']} | "
                     f"{r['mb_shipped_per_group']} | "
                     + ", ".join(f"{k} {v}" for k, v in top) + " |")
    return "\n".join(lines)


def feed(work: Path, notes: int, share: float, launch_s: float, task_counts: tuple[int, ...],
         timeout: float) -> dict:
    """Calibrate, then run each layout with one and two tasks; every row and the summary."""
    corpus = interleaved(e3c_notes(SHARED))
    inputs = work / f"notes-{notes}"
    write_notes(inputs, corpus, notes)
    words = sum(len(n["text"].split()) for n in corpus) / len(corpus)
    rows, capacity = [], {}
    for tasks in task_counts:
        task_file = save_models(work, DRY, SHARED, tasks)  # their configurations and tokenizer
        free = Device(folder=str(work / "device"), token_s=0.0, launch_s=launch_s,
                      label_share=min(1.0, 17 / words))
        rec = run_job(inputs, task_file, work, free,
                      ("--large_model", "false", "--direct_num_workers", str(CORES)), timeout)
        capacity[tasks] = rec["tokens"] / rec["inferring_s"]
        print(f"host capacity, {tasks} task(s): {capacity[tasks]:,.0f} real tokens/s "
              f"({notes / rec['inferring_s']:,.0f} notes/s); device set to {share} of it",
              file=sys.stderr, flush=True)
        device = Device(folder=free.folder, token_s=1 / (share * capacity[tasks]),
                        launch_s=launch_s, label_share=free.label_share)
        for layout, flags in LAYOUTS.items():
            rec = run_job(inputs, task_file, work, device, flags, timeout)
            rows.append(row(layout, tasks, notes, rec))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "capacity_tokens_per_s": {str(k): round(v) for k, v in
                                                    capacity.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--notes", type=int, default=12_000, help="notes per job")
    parser.add_argument("--device_share", type=float, default=0.5,
                        help="the stand-in device's rate, as a share of the host's capacity")
    parser.add_argument("--launch_ms", type=float, default=1.0,
                        help="host CPU milliseconds per batch")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run, one task (a minute, mostly the jobs' start-up)")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    notes = 400 if args.smoke else args.notes
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="feed-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = feed(work, notes, args.device_share, args.launch_ms / 1e3,
                      (1,) if args.smoke else (1, 2), timeout=600)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {CORES} cores; "
          f"{notes:,} E3C notes a job; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(table(result["rows"]) + "\n")
    busy = {layout: {str(r["tasks"]): r["device_busy"] for r in result["rows"]
                     if r["layout"] == layout} for layout in LAYOUTS}
    print(json.dumps({"device_busy": busy, "notes": notes, "cores": CORES,
                      "device_share": args.device_share,
                      "capacity_tokens_per_s": result["capacity_tokens_per_s"]}))


if __name__ == "__main__":
    main()
