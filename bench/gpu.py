"""The GPU kit: one prepared command that proves the GPU path on a bare GPU machine.

- ``python -m bench.gpu --prepare`` (here: PyPI and ``../shared`` reachable) fills ``.gpu-kit/``
  (ignored by git, carried to the GPU machine) with the cp312 manylinux wheels of what the job
  imports that the GPU image lacks (apache-beam and its missing needs, installed there with
  ``--no-deps``) and the data, compressed: the XLM-R tokenizer, the E3C notes, the SPACCC cases
  and gold. The whole stays within the 64 MiB that travel with the checkout.
- ``python -m bench.gpu --out DIR`` (there, the kit beside it): installs the wheels into a
  scratch folder, unpacks the data, and within ``--minutes`` (8) writes ``DIR/gpu.json`` and
  ``DIR/gpu.md`` (rewritten after every stage, so a cut-off run still leaves its figures):
  the device, driver, torch and CUDA; the matrix-product ceiling (bf16, 8192^3 and one
  encoder layer's shapes, CUDA events); the model path of a base-size XLM-R (random weights,
  real E3C text) at three batch budgets and with ``torch.compile``: real tokens/s, padding, MFU
  against the measured ceiling and the spec peak; the whole ``python -m pipeline.run``
  (DirectRunner, ``--device cuda``, two base-size tasks, then one, on 20,000 E3C notes):
  documents/s, GPU busy share (``nvidia-smi`` sampled), peak GPU memory, host CPU share; and
  the GPU faults: a real out-of-memory halves the batch, a real accelerator error stops the
  job with nothing committed.
- ``python -m bench.gpu --dry_run --out DIR``: the same code on the CPU with tiny sizes, in
  well under two minutes (a test runs it, so the kit cannot rot between GPU runs). Without a
  kit folder it runs in this environment on ``../shared``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".gpu-kit"
KIT_LIMIT = 64 << 20  # what travels with the checkout to the GPU machine, all of it
# What the job imports that the GPU image (Python 3.12, torch 2.11, transformers 5.17, numpy
# 2.5.2, pyarrow, pandas, grpcio, protobuf, pyyaml, fsspec, requests, ...) does not have, found
# by importing the job's modules there with only the image and these: apache-beam's needs, at
# the versions apache-beam 2.77 accepts.
WHEELS = ("apache-beam==2.77.0", "proto-plus>=1.7.1,<2", "pytz>=2018.3", "fastavro<2",
          "beartype>=0.21,<0.23", "httplib2<1", "zstandard>=0.18,<1", "cryptography>=39,<51",
          "cffi", "pycparser", "jsonpickle>=3.0.4,<5", "fasteners<1", "objsize>=0.6.1,<0.8")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any")
DATA = ("tokenizers/xlm-roberta-base/tokenizer.json",
        "tokenizers/xlm-roberta-base/tokenizer_config.json",
        "tokenizers/xlm-roberta-base/special_tokens_map.json",
        "corpora/e3c-layer3", "corpora/spaccc-es")
# Dense bf16 tensor-core peaks, TFLOP/s (the data sheets' figures without sparsity; sources in
# docs/gpu.md); the first name found in the device's name wins.
SPEC_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.4), ("H100 PCIe", 756.0),
                    ("H100 NVL", 835.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("L4", 121.0), ("A10", 125.0))


ACCELERATOR_ERRORS = ("AcceleratorError", "device-side assert", "CUDA error")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The sizes of one run of the kit."""

    size: str  # the model body (bench.backends.SIZES)
    device: str  # where the models run: cuda, or cpu in a dry run
    matmul: int  # the n of the n^3 ceiling product
    layer_tokens: int  # tokens of the encoder-layer ceiling products
    model_chars: int  # characters of E3C text for the model path
    budgets: tuple[int, ...]  # batch budgets of the model path
    notes: int  # notes of the whole job
    job_timeout: float  # seconds one whole job may take (a hung one must not eat the rest)
    oom_windows: int  # windows (of 510 sub-words) in the out-of-memory batch
    profile_notes: int  # notes of the profiled job and of the two tasks in one process
    job_options: tuple[str, ...] = ()


GPU = Plan(size="base", device="cuda", matmul=8192, layer_tokens=32768, model_chars=8_000_000,
           budgets=(16384, 32768, 65536), notes=60_000, job_timeout=150, oom_windows=256,
           profile_notes=4_000)
DRY = Plan(size="tiny", device="cpu", matmul=256, layer_tokens=512, model_chars=30_000,
           budgets=(1024, 4096), notes=120, job_timeout=90, oom_windows=8, profile_notes=60,
           job_options=("--direct_num_workers", "2"))
# the model layouts a whole job is measured in (bench.feed measures them on the CPU)
LAYOUTS = {"": (), "_shared": ("--large_model", "true")}


# -- here: the kit ------------------------------------------------------------------------------

def prepare(kit: Path, shared: Path) -> dict:
    """Fill ``kit`` with the wheels and the data; fails if the whole would not travel."""
    wheels = kit / "wheels"
    shutil.rmtree(kit, ignore_errors=True)
    wheels.mkdir(parents=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "-d", str(wheels), *WHEELS], check=True)
    with tarfile.open(kit / "data.tar.xz", "w:xz") as tar:
        for name in DATA:
            tar.add(shared / name, arcname=name)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    checkout = sum((REPO / f).stat().st_size for f in tracked if f and (REPO / f).is_file())
    manifest = {"wheels": sorted(f.name for f in wheels.iterdir()), "data": list(DATA),
                "kit_bytes": size, "checkout_bytes": checkout}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if size + checkout > KIT_LIMIT:
        raise SystemExit(f"bench.gpu: the kit ({size / 2**20:.1f} MiB) and the checkout "
                         f"({checkout / 2**20:.1f} MiB) exceed the {KIT_LIMIT >> 20} MiB that "
                         "travel")
    return manifest


def install(kit: Path, scratch: Path) -> dict[str, str]:
    """Install the kit's wheels (``--no-deps``, as the image has the rest) and unpack its data
    under ``scratch``; the environment that uses them."""
    site, data = scratch / "site", scratch / "shared"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
                    "--target", str(site), *map(str, sorted((kit / "wheels").glob("*.whl")))],
                   check=True)
    # byte-compiled once, on every core: uncompiled, each job's start compiled Beam again (7 s)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)], check=True)
    with tarfile.open(kit / "data.tar.xz") as tar:
        tar.extractall(data, filter="data")
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH"))
                           if p)
    return {"PYTHONPATH": path, "CLINICAL_NER_SHARED": str(data),
            "CLINICAL_NER_GPU_KIT": str(kit)}


# -- there: the stages --------------------------------------------------------------------------

def environment(plan: Plan) -> dict:
    """What the figures were measured with."""
    import numpy
    import torch
    import transformers

    from transforms.inference.models import nvidia_driver

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_build": torch.version.cuda, "transformers": transformers.__version__,
           "numpy": numpy.__version__, "cpu_cores": os.cpu_count(),
           "apache_beam": _version("apache-beam"),
           "kit": os.environ.get("CLINICAL_NER_GPU_KIT")}
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        smi = shutil.which("nvidia-smi") and subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip()
        out.update(device=name, driver=nvidia_driver() or smi or None,
                   cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count,
                   spec_bf16_tflops=spec_peak(name))
    else:
        out.update(device=f"CPU ({platform.processor() or platform.machine()}), dry run")
    return out


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def spec_peak(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, TFLOP/s (None when not in the table)."""
    return next((peak for key, peak in SPEC_BF16_TFLOPS if key in name), None)


def ceiling(plan: Plan) -> dict:
    """bf16 matrix products: ``n^3`` and one encoder layer's shapes, TFLOP/s."""
    import torch

    from transforms.inference.rates import layer_shapes
    from transforms.inference.backends import matmul_rate

    from pipeline.bench import figure  # never 0: a CPU that emulates bf16 (a dry run) is slow

    n = plan.matmul
    cube = matmul_rate(torch.bfloat16, [(n, n, n)], seconds=1.0, device=plan.device)
    layer = matmul_rate(torch.bfloat16, layer_shapes(plan.layer_tokens), seconds=1.0,
                        device=plan.device)
    return {"bf16_cube_n": n, "bf16_cube_tflops": figure(cube / 1e12),
            "bf16_layer_tokens": plan.layer_tokens, "bf16_layer_tflops": figure(layer / 1e12)}


def e3c_notes(shared: Path) -> list[dict]:
    """The E3C notes (es, en, it), as stored."""
    notes = []
    for lang in ("es", "en", "it"):
        with gzip.open(shared / "corpora" / "e3c-layer3" / f"{lang}.jsonl.gz", "rt",
                       encoding="utf-8") as f:
            notes += [json.loads(line) for line in f]
    return notes


def interleaved(notes: list[dict]) -> list[dict]:
    """The notes, the languages taking turns (those with notes left)."""
    by_lang: dict[str, list[dict]] = {}
    for n in notes:
        by_lang.setdefault(n["lang"], []).append(n)
    return [n for group in itertools.zip_longest(*by_lang.values()) for n in group if n]


def texts_of(notes: list[dict], chars: int) -> list[str]:
    """The first notes' texts, about ``chars`` characters of them."""
    texts, total = [], 0
    for n in notes:
        if total >= chars:
            break
        texts.append(n["text"])
        total += len(n["text"])
    return texts


def model_path(plan: Plan, notes: list[dict], ceiling_tflops: float | None,
               spec_tflops: float | None) -> dict:
    """The pipeline's model path (groups of documents, token-budget batches, the encoder, the
    heads) on real text, at each batch budget, then compiled at the default one: each timed
    twice, the faster kept."""
    import torch

    from bench.backends import as_works, bench_spec, infer_groups, loaded
    from pipeline.bench import Counted
    from transforms.core.spec import CPU_BATCH, GPU_BATCH
    from transforms.handlers import InferenceConfig, TaskInference

    started = time.perf_counter()
    works = as_works(texts_of(notes, plan.model_chars), 512)
    tokenize_s = time.perf_counter() - started
    clf, shapes, runs_as, _ = loaded("auto", "torch", plan.size, device=plan.device)
    runs = {}
    default = GPU_BATCH.tokens if plan.device == "cuda" else plan.budgets[-1]
    for budget, compiled in [*((b, False) for b in plan.budgets), (default, True)]:
        started = time.perf_counter()
        infer = TaskInference(bench_spec(), InferenceConfig(
            batch_tokens=budget, max_batch_windows=1 << 16,
            batch_mix=(GPU_BATCH if plan.device == "cuda" else CPU_BATCH).mix))  # as the job
        passes = []
        try:
            if compiled:
                clf.compile()
            for _ in range(2):  # the first pass also chooses kernels (and compiles)
                passes.append(Counted(clf, shapes))
                infer_groups(works, infer, passes[-1], budget)
        except Exception as e:  # noqa: BLE001 - a row that fails is a finding; the others stand
            runs[f"{budget}{' compiled' if compiled else ''}"] = {"error": _error(e)}
            continue
        row = min(passes, key=lambda c: c.seconds).figures()
        row["mfu_measured"] = _share(row["model_gops_per_s"] / 1e3, ceiling_tflops)
        row["mfu_spec"] = _share(row["model_gops_per_s"] / 1e3, spec_tflops)
        if compiled:  # what the first pass took beyond the second: compiling
            row["compile_s"] = round(passes[0].seconds - passes[1].seconds, 1)
        row["stage_s"] = round(time.perf_counter() - started, 1)
        runs[f"{budget}{' compiled' if compiled else ''}"] = row
    del clf
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    return {"runs_as": runs_as, "documents": len(works), "tokenize_s": round(tokenize_s, 1),
            "runs": runs}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _share(value: float, of: float | None) -> float | None:
    return round(value / of, 3) if of else None


class GpuSampler:
    """``nvidia-smi`` sampled every ``interval_ms`` in the background: utilisation, memory."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_s = interval_ms / 1e3
        self.samples: list[tuple[float, float]] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", f"--loop-ms={interval_ms}"],
                stdout=subprocess.PIPE, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((util, mem))

    def stop(self) -> dict:
        """Mean utilisation over the run and over its busy part (first to last sample with
        a kernel running: ``inferring_s``), peak memory (MiB)."""
        if self._proc is None:
            return {"gpu_busy": None, "gpu_busy_while_inferring": None, "inferring_s": None,
                    "peak_gpu_mib": None}
        self._proc.terminate()
        self._proc.wait()
        self._reader.join(timeout=5)
        util = [u for u, _ in self.samples]
        busy = [i for i, u in enumerate(util) if u > 0]
        active = util[busy[0]:busy[-1] + 1] if busy else []
        return {"gpu_busy": _share(sum(util), 100 * len(util)),
                "gpu_busy_while_inferring": _share(sum(active), 100 * len(active)),
                "inferring_s": round(len(active) * self.interval_s, 1),
                "peak_gpu_mib": max((m for _, m in self.samples), default=None),
                # what the GPU held when the job started (this bench's own process)
                "baseline_gpu_mib": self.samples[0][1] if self.samples else None,
                "samples": len(util)}


def cpu_times() -> tuple[int, int]:
    """All cores' (busy, total) jiffies since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


SPANS_PER_NOTE = 17  # what the probe model finds in a note (15-20): the host's work per note


def bias_to_o(model, tokenizer, texts: Sequence[str], spans: float = SPANS_PER_NOTE) -> float:
    """Raise a random classifier's ``O`` bias until about ``spans`` words of a note (of
    ``texts``) get another label, as a real model's few mentions do (a random head labels most
    words, and the host's decoding and writing of ten times the spans is then the figure); on
    the CPU, a few notes. Returns the share of words left non-``O``."""
    import numpy as np
    import torch

    words = [len(t.split()) for t in texts]
    share = min(1.0, spans / max(1.0, sum(words) / len(words)))
    enc = tokenizer(list(texts), truncation=True, max_length=512, padding=True,
                    return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits.float()
    real = enc["attention_mask"].bool()
    o = model.config.label2id["O"]
    others = torch.cat([logits[..., :o], logits[..., o + 1:]], dim=-1).amax(-1)
    margin = (others - logits[..., o])[real].numpy()
    with torch.no_grad():
        model.classifier.bias[o] += float(np.quantile(margin, 1 - share))
    return share


def save_models(work: Path, plan: Plan, shared: Path, tasks: int, vocab: int | None = None,
                texts: Sequence[str] = ()) -> Path:
    """``tasks`` random-weight token classifiers of ``plan.size`` as Hugging Face folders and
    the task file naming them (``vocab``: a smaller vocabulary than the tokenizer's;
    ``texts``: notes their ``O`` bias is set on, ``bias_to_o``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from bench.backends import base_model

    hf_logging.disable_progress_bar()
    tokenizer = shared / "tokenizers" / "xlm-roberta-base"
    lines = ["tasks:"]
    for i, name in enumerate(("procedure", "symptom")[:tasks]):
        folder = work / f"model-{name}-{vocab or 'full'}"
        if not folder.exists():
            model = base_model(seed=i, size=plan.size)
            if vocab:
                model.resize_token_embeddings(vocab)
            elif texts:
                bias_to_o(model, AutoTokenizer.from_pretrained(tokenizer), texts)
            model.save_pretrained(folder)
        lines += [f"  {name}:", "    kind: hf", f"    model: {folder}",
                  f"    tokenizer: {tokenizer}", "    languages: [es, en, it]"]
    path = work / f"tasks-{tasks}-{vocab or 'full'}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_notes(folder: Path, notes: list[dict], count: int, per_shard: int = 500) -> None:
    """``count`` notes (the corpus repeated, ids made unique) as JSON Lines shards."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{n['id']}-{i // len(notes)}", "lang": n["lang"], "text": n["text"]}
            for i, n in ((i, notes[i % len(notes)]) for i in range(count))]
    for start in range(0, count, per_shard):
        with open(folder / f"notes-{start // per_shard:04d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[start:
                                                                                start + per_shard])


def job(inputs: Path, tasks: Path, out: Path, plan: Plan, timeout: float,
        options: tuple[str, ...] = (), profile: Path | None = None) -> dict:
    """``python -m pipeline.run`` as a user runs it, with the GPU sampled and the host's CPU
    share measured (``options`` after the plan's; ``profile``: run under cProfile, its
    statistics written there)."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    cmd = [sys.executable, *profiler, "-m", "pipeline.run", "--input", str(inputs), "--output",
           str(out), "--tasks", str(tasks), "--device", plan.device, *plan.job_options, *options]
    sampler = GpuSampler()
    busy0, total0 = cpu_times()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, log = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # the job and its workers and model servers, all of them
        os.killpg(proc.pid, 9)
        _, log = proc.communicate()
    wall = time.perf_counter() - started
    busy1, total1 = cpu_times()
    timed_out = wall >= timeout
    return {"rc": proc.returncode, "timed_out": timed_out, "ok": proc.returncode == 0,
            "wall_s": round(wall, 1), **sampler.stop(),
            "host_cpu_busy": _share(busy1 - busy0, total1 - total0),
            "log_tail": log.strip().splitlines()[-3:], "_log": log}


def whole_job(plan: Plan, notes: list[dict], shared: Path, work: Path, tasks: int,
              timeout: float, count: int | None = None, options: tuple[str, ...] = (),
              profile: Path | None = None) -> dict:
    """The whole job on ``count`` (``plan.notes``) E3C notes with ``tasks`` base-size tasks
    (``profile``: in one process under cProfile, its statistics written there and where the
    time went added)."""
    count = count or plan.notes
    inputs = work / f"notes-{count}"
    if not inputs.exists():
        write_notes(inputs, notes, count)
    if profile:
        options = (*options, "--direct_num_workers", "1")
    out = work / f"out-{tasks}-{len(list(work.glob('out-*')))}"
    tasks_file = save_models(work, plan, shared, tasks, texts=[n["text"] for n in notes[:24]])
    row = job(inputs, tasks_file, out, plan, timeout, options, profile)
    log = row.pop("_log")
    if profile and profile.exists():
        row["profile"] = hot_spots(profile)
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    counts = record.get("counts", {})
    inferring = row["inferring_s"] if row["ok"] else None
    row.update(tasks=tasks, notes=count, options=" ".join(options),
               documents_per_s=round(count / row["wall_s"], 1) if row["ok"] else None,
               spans_per_document=round(sum(v for k, v in counts.items()
                                            if k.startswith("spans/")) / annotated, 1)
               if (annotated := counts.get("documents/annotated")) else None,
               documents_per_s_while_inferring=round(count / inferring) if inferring
               else None, documents_annotated=counts.get("documents/annotated"),
               counts={k: v for k, v in counts.items()
                       if k.startswith(("documents/", "tokens/", "windows/"))},
               models_loaded_in=sorted(set(re.findall(r"model loaded in process (\d+)", log))))
    return row


def hot_spots(stats: Path, top: int = 20) -> dict:
    """Where a profiled job's time went: the project's functions by cumulative time, and every
    function by its own time."""
    import pstats

    rows = pstats.Stats(str(stats)).stats  # (file, line, name) -> (calls, _, own, cumulative, _)

    def named(key: tuple) -> str:
        file, line, name = key
        return f"{Path(file).relative_to(REPO) if file.startswith(str(REPO)) else Path(file).name}"\
               f":{line}({name})"

    def listed(keys: list, by: int) -> list[list]:
        return [[named(k), rows[k][0], round(rows[k][2], 2), round(rows[k][3], 2)]
                for k in sorted(keys, key=lambda k: -rows[k][by])[:top]]

    ours = [k for k in rows if k[0].startswith(str(REPO / "transforms"))
            or k[0].startswith(str(REPO / "pipeline"))]
    return {"columns": ["function", "calls", "own_s", "cumulative_s"],
            "ours_by_cumulative": listed(ours, 3), "all_by_own": listed(list(rows), 2)}


def oom_halving(plan: Plan) -> dict:
    """A batch too large for the free memory: the handler halves it until it fits, and every
    window still gets its predictions, equal to those of an unconstrained run. On CUDA the
    memory is really exhausted (all but ``headroom`` taken); on a CPU the out-of-memory
    error is injected above a batch size."""
    import numpy as np
    import torch

    from bench.backends import bench_spec, loaded
    from transforms.handlers import InferenceConfig, TaskInference
    from transforms.core.predictor import Predictor
    from transforms.core.records import Document, Windows, Work

    # a model with clear margins: batches of other sizes may round differently on a GPU
    clf, _, _, _ = loaded("auto", "torch", plan.size, stable=True, device=plan.device)
    rng = np.random.default_rng(0)
    n, width = plan.oom_windows, 510
    words = np.arange(width)

    def one_window(i: int) -> Work:
        ids = np.concatenate([[0], rng.integers(5, 250_000, width), [2]])
        windows = Windows(ids=ids, id_bounds=np.array([0, width + 2]), positions=words + 1,
                          word_bounds=np.array([0, width]), starts=words, ends=words + 1)
        return Work(Document(str(i), str(i), "", "bench", lang="es", tasks=("t",)),
                    {"tok": windows})

    group = tuple(one_window(i) for i in range(n))
    infer = TaskInference(bench_spec(), InferenceConfig(batch_tokens=n * 512,
                                                        max_batch_windows=n))
    calls: list[tuple[int, str]] = []
    injected_above = None if plan.device == "cuda" else n // 4

    class Recorded(Predictor):
        def predict(self, windows, *args):
            if injected_above and len(windows) > injected_above:
                calls.append((len(windows), "out of memory (injected)"))
                raise torch.OutOfMemoryError("out of memory (injected)")
            try:
                result = clf.predict(windows, *args)
            except torch.OutOfMemoryError:
                calls.append((len(windows), "out of memory"))
                raise
            calls.append((len(windows), "ok"))
            return result

        def release_memory(self):
            clf.release_memory()

    want = infer(group, clf)
    ballast = None
    if plan.device == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        ballast = torch.empty(max(0, free - (768 << 20)), dtype=torch.uint8, device="cuda")
    try:
        got = infer(group, Recorded())
    finally:
        del ballast
        if plan.device == "cuda":
            torch.cuda.empty_cache()
    same = np.mean([np.array_equal(a.predictions["t"].label_ids, b.predictions["t"].label_ids)
                    for a, b in zip(want, got)])
    halved = any(outcome != "ok" for _, outcome in calls) and calls[-1][1] == "ok"
    return {"ok": bool(halved and same >= 0.99 and not any(w.failures for w in got)),
            "injected": injected_above is not None, "calls": calls,
            "documents_equal_to_unconstrained": round(float(same), 3)}


def accelerator_error(plan: Plan, notes: list[dict], shared: Path, work: Path,
                      timeout: float) -> dict:
    """A model whose vocabulary is smaller than the tokenizer's: on CUDA its lookups raise a
    device-side assert, a real accelerator error. The job must stop (not write the documents
    off as bad data) and commit nothing."""
    inputs = work / "fault-notes"
    write_notes(inputs, notes, 40, per_shard=20)
    out = work / "out-fault"
    row = job(inputs, save_models(work, plan, shared, 1, vocab=1000), out, plan, timeout)
    log = row.pop("_log")
    # on CUDA a device-side assert; on a CPU the same lookups fail as data, every window of
    # several documents: the model is broken, which stops the job too
    markers = ACCELERATOR_ERRORS if plan.device == "cuda" else ("ModelFault",)
    row["stopped_on"] = next((m for m in markers if m in log), None)
    bookkeeping = (".tmp", "_runs", "_log")  # not outputs: the run's own records
    committed = [str(p.relative_to(out)) for p in out.rglob("*")
                 if p.is_file() and not p.relative_to(out).parts[0].startswith(bookkeeping)
                 and p.name != "run.json"] if out.exists() else []
    row.update(committed=committed, ok=bool(row["rc"] != 0 and not row["timed_out"]
                                            and row["stopped_on"] and not committed))
    return row


# -- the run ------------------------------------------------------------------------------------

def run_stages(plan: Plan, out: Path, minutes: float, only: tuple[str, ...] = ()) -> dict:
    """Every stage (or those named in ``only``) in turn, each skipped when too little time is
    left for it, the report rewritten after each."""
    import torch

    deadline = time.monotonic() + minutes * 60
    out.mkdir(parents=True, exist_ok=True)
    shared = Path(os.environ.get("CLINICAL_NER_SHARED", REPO.parent / "shared"))
    report: dict = {"plan": plan.__dict__, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("CLINICAL_NER_CACHE", str(work / "cache"))
        notes = interleaved(e3c_notes(shared))
        env = environment(plan)
        report["environment"] = env
        stages: list[tuple[str, float, Callable[[], dict]]] = [
            ("ceiling", 20, lambda: ceiling(plan)),
            ("model_path", 90, lambda: model_path(
                plan, notes, report["stages"].get("ceiling", {}).get("bf16_layer_tflops"),
                env.get("spec_bf16_tflops"))),
            # each layout (a copy per process, the default; one shared copy), one task on
            # plan.notes notes and two tasks on half as many
            *((f"job_{tasks}_task{'s' if tasks > 1 else ''}{name}", 60,
               functools.partial(lambda t, o: whole_job(plan, notes, shared, work, t, timeout(),
                                                        plan.notes // t, o), tasks, flags))
              for tasks in (1, 2) for name, flags in LAYOUTS.items()),
            ("fault_out_of_memory", 20, lambda: oom_halving(plan)),
            ("fault_accelerator_error", 45, lambda: accelerator_error(plan, notes, shared, work,
                                                                        timeout())),
            ("job_profile", 60, lambda: whole_job(
                plan, notes, shared, work, 1, timeout(), plan.profile_notes,
                profile=out / "job_profile.prof")),
        ]
        stages = [s for s in stages if not only or s[0] in only]

        def left() -> float:
            return max(1.0, deadline - time.monotonic() - 5)

        def timeout() -> float:
            return min(left(), plan.job_timeout)

        for name, needs, stage in stages:
            if left() < needs:
                report["stages"][name] = {"skipped": f"{left():.0f} s left, {needs} s needed"}
                continue
            started = time.perf_counter()
            try:
                result = stage()
            except Exception as e:  # noqa: BLE001 - one stage's failure is a finding, not the end
                result = {"error": _error(e)}
            result["stage_s"] = round(time.perf_counter() - started, 1)
            report["stages"][name] = result
            write_report(report, out)  # after each stage: a run cut off keeps what it measured
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    report["wall_s"] = round(minutes * 60 - (deadline - time.monotonic()), 1)
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    """``gpu.json`` and its readable summary ``gpu.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu.md").write_text(summary(report))


def summary(report: dict) -> str:
    """The figures that matter, as Markdown."""
    env, stages = report.get("environment", {}), report["stages"]
    lines = [f"# GPU kit: {env.get('device', '?')}", "",
             f"Started {report['started']}; torch {env.get('torch')} (CUDA "
             f"{env.get('cuda_build')}), driver {env.get('driver')}, Python {env.get('python')}, "
             f"transformers {env.get('transformers')}, numpy {env.get('numpy')}, apache-beam "
             f"{env.get('apache_beam')} ({'the kit' if env.get('kit') else 'installed'}), "
             f"{env.get('cpu_cores')} cores; spec bf16 peak {env.get('spec_bf16_tflops')} "
             "TFLOP/s.",
             ""]
    c = stages.get("ceiling", {})
    if "bf16_cube_tflops" in c:
        lines += [f"bf16 matrix products: {c['bf16_cube_n']}^3 {c['bf16_cube_tflops']} TFLOP/s; "
                  f"one encoder layer's shapes over {c['bf16_layer_tokens']} tokens "
                  f"{c['bf16_layer_tflops']} TFLOP/s (the measured ceiling).", ""]
    m = stages.get("model_path", {})
    if "runs" in m:
        lines += [f"Model path ({m['runs_as']}, {m['documents']} E3C notes):", "",
                  "| batch budget | real tokens/s | padding | MFU (measured) | MFU (spec) |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {r['model_real_tokens_per_s']:,} | {r['padding_fraction']} | "
                  f"{r['mfu_measured']} | {r['mfu_spec']} |" if "error" not in r
                  else f"| {k} | {r['error']} | | | |" for k, r in m["runs"].items()]
        lines.append("")
    jobs = [(k, r) for k, r in stages.items() if k.startswith("job_") and "wall_s" in r]
    if jobs:
        lines += ["Whole job (`python -m pipeline.run`, DirectRunner; documents/s over the "
                  "whole process, start-up included / while the GPU was inferring):", "",
                  "| stage | tasks | notes | wall s | documents/s | GPU busy (run / inferring) | "
                  "peak GPU MiB | host CPU busy | exit |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {r['tasks']} | {r['notes']:,} | {r['wall_s']} | "
                  f"{r['documents_per_s']} / "
                  f"{r['documents_per_s_while_inferring']} | {r['gpu_busy']} / "
                  f"{r['gpu_busy_while_inferring']} | {r['peak_gpu_mib']} | "
                  f"{r['host_cpu_busy']} | {r['rc']} |" for k, r in jobs]
        lines.append("")
    hot = stages.get("job_profile", {}).get("profile")
    if hot:
        lines += ["Where the profiled job's time went (cProfile, one process; the project's "
                  "functions by cumulative seconds):", "", "| function | calls | own s | "
                  "cumulative s |", "| --- | --- | --- | --- |"]
        lines += [f"| `{f}` | {n:,} | {own} | {cum} |" for f, n, own, cum in
                  hot["ours_by_cumulative"]]
        lines.append("")
    for name in ("fault_out_of_memory", "fault_accelerator_error"):
        r = stages.get(name, {})
        if "ok" in r:
            lines.append(f"- {name}: {'holds' if r['ok'] else 'FAILS'}"
                         f"{' (injected on the CPU)' if r.get('injected') else ''}")
    problems = [f"- {k}: {v.get('error') or v.get('skipped')}" for k, v in stages.items()
                if "error" in v or "skipped" in v]
    if problems:
        lines += ["", "Not measured:", *problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="fill the kit folder (here)")
    ap.add_argument("--dry_run", action="store_true", help="the CPU, tiny sizes")
    ap.add_argument("--kit", type=Path, default=KIT)
    ap.add_argument("--out", type=Path, default=Path("gpu-out"))
    ap.add_argument("--minutes", type=float, default=8.0, help="wall time for the stages")
    ap.add_argument("--stages", default="", help="only these stages (comma-separated)")
    ap.add_argument("--installed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        shared = Path(os.environ.get("CLINICAL_NER_SHARED", REPO.parent / "shared"))
        manifest = prepare(args.kit, shared)
        print(f"bench.gpu: {args.kit} holds {len(manifest['wheels'])} wheels and the data, "
              f"{manifest['kit_bytes'] / 2**20:.1f} MiB (+ the checkout's "
              f"{manifest['checkout_bytes'] / 2**20:.1f} MiB)")
        return
    if args.kit.exists() and not args.installed:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as scratch:
            env = {**os.environ, **install(args.kit, Path(scratch))}
            minutes = args.minutes - (time.monotonic() - started) / 60
            cmd = [sys.executable, "-m", "bench.gpu", "--installed", "--out", str(args.out),
                   "--minutes", f"{minutes:.2f}", "--stages", args.stages,
                   *(["--dry_run"] if args.dry_run else [])]
            raise SystemExit(subprocess.run(cmd, cwd=REPO, env=env).returncode)
    report = run_stages(DRY if args.dry_run else GPU, args.out, args.minutes,
                        tuple(s for s in args.stages.split(",") if s))
    print((args.out / "gpu.md").read_text())
    failed = [k for k, v in report["stages"].items() if "error" in v or v.get("ok") is False
              or any("error" in row for row in v.get("runs", {}).values())]
    if failed:
        raise SystemExit(f"bench.gpu: stages failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
