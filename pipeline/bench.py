"""How fast this machine runs the job's models, against what it can do:
``python -m pipeline.bench --tasks FILE --input PATH [--docs 100] [job options]``.

It measures this machine's matrix-product rates on one encoder layer's shapes over 8,192
tokens: fp32, bf16 and fp16 through torch (on the GPU where the job would use one) and, on a
CPU with OpenVINO, int8 as the int8 path runs them (NNCF-quantized). Then each task's model,
loaded as a worker of the job loads it (its backend, precision and cached conversion; without
one, ``load_s`` includes converting it), runs the first ``--docs`` readable documents of
``--input`` through the job's own segmenting and batching. It prints, as JSON, each task's
real tokens/s, its encoder's rate (operations per second, from the model's shapes) and that
rate's share of the ceiling it runs under: the int8 rate for OpenVINO int8, else the rate of
its dtype (and an int8 model's ``float_parts`` dtype). Where an OpenVINO model reaches less
than 0.6 of it, a profile of one of its batches says where the time goes (linear layers,
attention, layer norm, quantize/dequantize, the vocabulary lookup in torch) and how fast its
linear layers alone run. No text is printed, and nothing is written but the model cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, Sequence

from pipeline.options import AnnotateOptions, inference_config, parse_options, uses_gpu
from pipeline.tasks import TaskFileError, load_tasks, pin_revisions
from transforms.core.predictor import Predictor, Request, Result
from transforms.core.records import Document, Work
from transforms.core.spec import TaskSpec
from transforms.core.windows import padded_length

PROG = "python -m pipeline.bench"
CEILING_TOKENS = 8192  # tokens of the matrix products timed for each ceiling
CEILING_SECONDS = 1.0  # how long each is timed
PROFILE_BELOW = 0.6  # an OpenVINO model under this share of its ceiling is profiled


def figure(rate: float) -> float:
    """A rate as printed: whole units from 100 up, else three significant digits (a small
    model's rates on a loaded machine are a fraction of one unit, not 0)."""
    return round(rate) if rate >= 100 else float(f"{rate:.3g}")


@dataclass(frozen=True, kw_only=True)
class Shapes:
    """An encoder's sizes, from its ``config.json``."""

    hidden: int
    layers: int
    intermediate: int

    @classmethod
    def of(cls, config) -> "Shapes":
        """The sizes a transformers config names (an intermediate size it does not name: four
        times the hidden one, as in BERT and XLM-R)."""
        return cls(hidden=config.hidden_size, layers=config.num_hidden_layers,
                   intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size))


def encoder_shapes(spec: TaskSpec) -> Shapes:
    """The sizes of ``spec``'s encoder (an ``mtl`` task's from its ``encoder``)."""
    from transformers import AutoConfig

    from transforms.io.storage import localize

    location = spec.model if spec.kind == "hf" else spec.encoder
    config = AutoConfig.from_pretrained(localize(location),
                                        revision=spec.revision if spec.kind == "hf" else None)
    return Shapes.of(config)


class Counted(Predictor):
    """A model whose batches are counted and timed: real and padded tokens, the encoder's
    operations (``flops_per_token`` at each batch's padded width), seconds in the model's
    calls (a group's batches in one, as the job runs them); a batch that fails (and is retried
    in parts) is not counted."""

    def __init__(self, model, shapes: Shapes) -> None:
        self.model, self.shapes = model, shapes
        self.device = getattr(model, "device", None)
        self.real = self.padded = self.largest = 0
        self.ops = self.seconds = 0.0

    def predict_many(self, batches: Sequence[Request], pad_to: int | None = None
                     ) -> list[Result | Exception]:
        from transforms.inference.rates import flops_per_token

        start = time.perf_counter()
        results = self.model.predict_many(batches, pad_to)
        self.seconds += time.perf_counter() - start
        for (windows, _, _), result in zip(batches, results):
            if isinstance(result, Exception):
                continue
            width = pad_to or padded_length(max(len(w) for w in windows))
            real = sum(len(w) for w in windows)
            self.real += real
            self.padded += width * len(windows)
            self.largest = max(self.largest, width * len(windows))
            s = self.shapes
            self.ops += real * flops_per_token(s.hidden, s.layers, s.intermediate, width)
        return results

    def release_memory(self) -> None:
        self.model.release_memory()

    def figures(self) -> dict:
        """Real tokens, padding, the largest batch, and the model path's speed."""
        return {"real_tokens": self.real,
                "padding_fraction": round(1 - self.real / max(self.padded, 1), 3),
                "largest_batch_tokens": self.largest,
                "model_path_s": round(self.seconds, 3),
                "model_real_tokens_per_s": round(self.real / max(self.seconds, 1e-9)),
                "model_gops_per_s": figure(self.gops_per_s)}

    @property
    def gops_per_s(self) -> float:
        """The encoder's operations per second (10^9) over the counted batches."""
        return self.ops / max(self.seconds, 1e-9) / 1e9


def ceilings(shapes: Shapes, device: str, threads: int | None) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of one layer's matrix products of ``shapes`` on ``device``,
    unrounded: fp32, bf16 and fp16 through torch; on a CPU with OpenVINO, int8."""
    from transforms.inference.backends import PRECISION_DTYPES, matmul_rate, openvino_available
    from transforms.inference.rates import int8_matmul_rate, layer_shapes

    products = layer_shapes(CEILING_TOKENS, shapes.hidden, shapes.intermediate)
    rates = {name: matmul_rate(dtype, products, CEILING_SECONDS, device) / 1e9
             for name, dtype in PRECISION_DTYPES.items()}
    if device == "cpu" and openvino_available():
        rates["int8"] = int8_matmul_rate(CEILING_TOKENS, shapes.hidden, shapes.intermediate,
                                         CEILING_SECONDS, threads) / 1e9
    return rates


def read_documents(opts: AnnotateOptions, count: int) -> list[Document]:
    """The first ``count`` readable documents of ``--input``, as the job reads them (a large
    file is read only as far as they go)."""
    from transforms.io.shards import list_files
    from transforms.read import Fields, plan_reads, read_task

    fields = Fields(id=opts.id_field, text=opts.text_field, lang=opts.lang_field)
    docs: list[Document] = []
    for task in plan_reads(list_files(opts.input, opts.input_format), opts.input_format):
        docs += islice((d for d in read_task(task, fields) if d.text), count - len(docs))
        if len(docs) >= count:
            break
    return docs


def groups(spec: TaskSpec, docs: Iterable[Document], segment, opts: AnnotateOptions
           ) -> Iterator[tuple[Work, ...]]:
    """The documents of ``docs`` that the task takes as the job's groups for it: segmented by
    ``segment`` (a set-up ``SegmentDoFn``), grouped by tokens. A document's language is its
    record's, else ``--language``, else the task's first (the bench detects none)."""
    from transforms.batch import GroupDocuments

    group = GroupDocuments(opts.group_tokens or 8 * opts.batch_tokens)
    group.start_bundle()
    for doc in docs:
        lang = doc.lang or opts.language or spec.languages[0]
        if lang not in spec.languages:
            continue
        for work in segment.process(doc.with_(lang=lang, tasks=(spec.name,))):
            if not work.failures and len(work.windows[spec.windows_key]):
                yield from group.process(work)
    yield from (last.value for last in group.finish_bundle())


def profile(model, spec: TaskSpec, group: tuple[Work, ...], shapes: Shapes) -> dict:
    """Where one batch of ``group``'s windows (up to 16, its longest) spends its time in an
    OpenVINO model (``rates.openvino_profile``), and the rate of its linear layers alone (none
    where the counters gave them no time)."""
    import numpy as np
    import torch

    from transforms.inference.models import pad
    from transforms.inference.rates import flops_per_token, openvino_profile, shares

    key = spec.windows_key
    windows = sorted((work.windows[key].window_ids(k) for work in group
                      for k in range(len(work.windows[key]))), key=len)[-16:]
    ids, mask = pad(windows, model.pad_id)
    seconds = openvino_profile(model.encoder, torch.from_numpy(ids.astype(np.int64)),
                               torch.from_numpy(mask.astype(np.int64)))
    linear_ops = ids.size * flops_per_token(shapes.hidden, shapes.layers, shapes.intermediate,
                                            0)  # at length 0: the linear layers' alone
    linear_s = seconds.get("linear layers", 0.0)
    return {"profile": shares(seconds),
            "linear_layers_gops_per_s": figure(linear_ops / linear_s / 1e9) if linear_s else None}


def bench_task(spec: TaskSpec, docs: Sequence[Document], opts: AnnotateOptions,
               shapes: Shapes, rates: dict[str, float]) -> dict:
    """One task's model loaded as a worker loads it, then ``docs`` through it, timed."""
    from transforms.handlers import TaskInference, TokenClassifierHandler
    from transforms.inference.backends import PRECISION_DTYPES
    from transforms.segment import SegmentDoFn

    config = inference_config(opts)
    start = time.perf_counter()
    model = TokenClassifierHandler(spec, config).load_model()
    load_s = time.perf_counter() - start
    segment = SegmentDoFn({spec.name: spec}, opts.method)
    segment.setup()
    infer = TaskInference(spec, config)
    first = next((g for doc in docs for g in groups(spec, [doc], segment, opts)), None)
    if first is None:
        raise BenchError(f"task {spec.name}: no document of --input in its languages "
                         f"({', '.join(spec.languages)}) gives it a window")
    infer(first, model)  # kernels chosen, caches filled
    counted = Counted(model, shapes)
    start = time.perf_counter()
    documents = windows = 0
    kept: tuple[Work, ...] = ()  # the first group: the profile's windows
    for group in groups(spec, docs, segment, opts):
        infer(group, counted)
        kept = kept or group
        documents += len(group)
        windows += sum(len(w.windows[spec.windows_key]) for w in group)
    seconds = time.perf_counter() - start
    report = {"runs_as": model.runs_as, "load_s": round(load_s, 1), "documents": documents,
              "windows": windows, "seconds": round(seconds, 2),
              "real_tokens_per_s": round(counted.real / seconds), **counted.figures()}
    openvino = model.runs_as.startswith("openvino")
    if model.runs_as == "openvino int8":
        report["float_parts"] = model.encoder.float_parts
    named = model.runs_as.split()[-1]  # torch's dtype name, or our precision's
    dtype = next((n for n, d in PRECISION_DTYPES.items() if str(d) == f"torch.{named}"), named)
    if dtype in rates:
        report["ceiling"] = (f"{dtype} {figure(rates[dtype])} "
                             f"G{'OP' if dtype == 'int8' else 'FLOP'}/s")
        report["share_of_ceiling"] = round(counted.gops_per_s / rates[dtype], 3)
        if openvino and report["share_of_ceiling"] < PROFILE_BELOW:
            report.update(profile(model, spec, kept, shapes))
    return report


class BenchError(ValueError):
    """What stops the bench before it measures: said in one line."""


def bench(argv: Sequence[str], count: int = 100) -> dict:
    """The machine's ceilings and each task's figures (see the module's text)."""
    import torch

    from pipeline.run import check_windows
    from transforms.inference.backends import cpu_name
    from transforms.inference.models import pick_device

    options = parse_options(list(argv), PROG, ("input", "tasks"))
    opts = options.view_as(AnnotateOptions)
    gpu = uses_gpu(options, local=True)
    opts.apply_device_defaults(gpu)
    opts.validate_required()
    specs = pin_revisions(load_tasks(opts.tasks))
    check_windows(specs, opts)
    device = pick_device("cuda" if gpu else "cpu").type  # no GPU where one is asked: stop here
    docs = read_documents(opts, count)
    if not docs:
        raise BenchError(f"--input {opts.input}: no readable document")
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    report: dict = {"device": torch.cuda.get_device_name() if gpu else cpu_name(),
                    "threads": torch.get_num_threads(), "ceiling_tokens": CEILING_TOKENS,
                    "matmul_g_per_s": {}, "tasks": {}}
    measured: dict[Shapes, dict[str, float]] = {}
    for name, spec in specs.items():
        shapes = encoder_shapes(spec)
        if shapes not in measured:
            measured[shapes] = ceilings(shapes, device, opts.torch_threads)
            report["matmul_g_per_s"][f"hidden {shapes.hidden}"] = {
                name: figure(rate) for name, rate in measured[shapes].items()}
        report["tasks"][name] = bench_task(spec, docs, opts, shapes, measured[shapes])
        print(f"task {name}: {json.dumps(report['tasks'][name])}", file=sys.stderr)
    return report


def main() -> None:
    """Console entry point: the report as JSON on standard output."""
    from pipeline.logs import configure_logging
    from transforms.inference.models import AcceleratorMissing, ModelLoadError
    from transforms.io.shards import InputError

    ap = argparse.ArgumentParser(prog=PROG, add_help=False, description=__doc__.split("\n\n")[1])
    ap.add_argument("--docs", type=int, default=100,
                    help="documents of --input to run (the first readable ones)")
    if "-h" in sys.argv or "--help" in sys.argv:
        ap.print_help()
        print("\nThe job's options (python -m pipeline.run --help) set how the models run.")
        raise SystemExit(0)
    known, rest = ap.parse_known_args(sys.argv[1:])
    if known.docs < 1:
        ap.error("--docs must be at least 1")
    configure_logging()
    try:
        print(json.dumps(bench(rest, known.docs), indent=2))
    except (BenchError, TaskFileError, InputError, ModelLoadError, AcceleratorMissing) as e:
        raise SystemExit(f"{PROG}: {e}") from None


if __name__ == "__main__":
    main()
