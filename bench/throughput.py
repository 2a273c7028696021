"""Throughput benchmark: the pipeline's inference path against the reference scripts' loop.

``python -m bench.throughput [--docs 30] [--precision auto]`` builds an ``xlm-roberta-base``-sized
token classifier with random weights (the real XLM-R tokenizer from ``../shared``) and, on the
first ``--docs`` real SPACCC cases, in separate processes on the same machine, measures:

- (b) ``reference``: the reference scripts' loop (``bench/reference.py``: raw text, one
  512-token window at a time, padded to 512, stride 128, fp32);
- (a) ``pipeline``: the pipeline's own path (word windows, windows of all documents sorted and
  batched by token budget, padding to the batch's longest, ``--precision``, span decoding), on
  the documents once and four times over (peak memory must not grow with the corpus);
- a bf16 matrix product of the model's shapes, the ceiling for model FLOP utilisation (MFU);
- span agreement between bf16 and fp32, on a model whose logits have clear margins and on the
  plain random one.

It prints documents/s, real tokens/s, padding fraction, peak RSS, the ratio (a)/(b) and MFU.
On a GPU machine the same command measures the GPU (the model goes to CUDA when present).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "tokenizers" / "xlm-roberta-base"
LABELS = {0: "O", 1: "B-PROCEDURE", 2: "I-PROCEDURE"}


def base_model(seed: int = 0, stable: bool = False):
    """An xlm-roberta-base-sized token classifier with random weights.

    ``stable`` builds one whose predictions have clear margins, for comparing precisions (a
    random classifier puts a few percent of words within rounding noise of a decision
    boundary): two embedding dimensions carry a large random sign per vocabulary entry, the
    layers' residual updates are damped so those signs survive, and the head reads them
    (O if the first is negative, else B or I by the second). Same shapes, same compute.
    """
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1, id2label=LABELS,
                              label2id={v: k for k, v in LABELS.items()})
    model = XLMRobertaForTokenClassification(config).eval()
    if stable:
        with torch.no_grad():
            emb = model.roberta.embeddings.word_embeddings.weight
            signs = torch.randint(0, 2, (emb.shape[0], 2), generator=torch.Generator()
                                  .manual_seed(seed + 1)) * 2 - 1
            emb[:, :2] = signs.to(emb.dtype)
            for layer in model.roberta.encoder.layer:
                layer.attention.output.dense.weight.mul_(0.1)
                layer.output.dense.weight.mul_(0.1)
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.weight[:, :2] = torch.tensor([[-1.0, 0.0], [1.0, 1.0], [1.0, -1.0]])
    return model


def documents(n: int) -> list[str]:
    """The first ``n`` SPACCC cases, exactly as stored."""
    files = sorted((SHARED / "corpora" / "spaccc-es" / "txt").glob("*.txt"))[:n]
    return [f.read_bytes().decode("utf-8") for f in files]


def flops_per_token(config, length: int) -> float:
    """Forward FLOPs per token of a BERT-style encoder at sequence length ``length``."""
    h, layers = config.hidden_size, config.num_hidden_layers
    return layers * (2 * (4 * h * h + 2 * h * config.intermediate_size) + 4 * length * h)


class _Counted:
    """A model whose batches are counted: real and padded tokens, encoder FLOPs."""

    def __init__(self, model, config) -> None:
        self.model, self.config = model, config
        self.real = self.padded = 0
        self.flops = 0.0

    def predict(self, windows, positions, heads, pad_to=None):
        width = pad_to or max(len(w) for w in windows)
        real = sum(len(w) for w in windows)
        self.real += real
        self.padded += width * len(windows)
        self.flops += real * flops_per_token(self.config, width)
        return self.model.predict(windows, positions, heads, pad_to)

    def release_memory(self) -> None:
        self.model.release_memory()


def run_pipeline_path(texts: list[str], precision: str, batch_tokens: int, max_tokens: int,
                      stable: bool = False, compile_model: bool = False) -> dict:
    """The pipeline's own stages from texts to spans (segment, group, infer, align), outside
    Beam, timed after the model is loaded."""
    from transformers import AutoTokenizer

    from transforms.align import Aligner
    from transforms.handlers import InferenceConfig, TaskInference
    from transforms.models import TokenClassifier, pick_device, resolve_dtype
    from transforms.records import Document, Work
    from transforms.segment import word_windows
    from transforms.spec import TaskSpec

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = base_model(stable=stable)
    device = pick_device()
    clf = TokenClassifier(model.base_model, {None: model.classifier}, device,
                          resolve_dtype(precision, device))
    spec = TaskSpec("t", "hf", "bench", ("es",), str(TOKENIZER), heads={"es": (None,)},
                    labels={None: tuple(LABELS[i] for i in range(len(LABELS)))},
                    tokenizer_key="tok")
    infer = TaskInference(spec, InferenceConfig(precision, batch_tokens))
    counted = _Counted(clf, model.config)

    def work(i: int, text: str) -> Work:
        windows = word_windows(text, tokenizer, max_tokens, max_tokens // 4)
        return Work(Document(str(i), str(i), text, "bench", lang="es", tasks=("t",)),
                    {"tok": windows})

    if compile_model:  # compile before timing, as a long job amortises it
        t0 = time.perf_counter()
        clf.compile()
        infer((work(0, texts[0]),), clf)
        compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    works = [work(i, text) for i, text in enumerate(texts)]
    t_tok = time.perf_counter() - t0
    done, group, tokens = [], [], 0
    for w in works:  # groups of documents as GroupDocuments makes them
        group.append(w)
        tokens += int(w.windows["tok"].id_bounds[-1])
        if tokens >= 8 * batch_tokens:
            done += infer(tuple(group), counted)
            group, tokens = [], 0
    done += infer(tuple(group), counted) if group else ()
    align = Aligner({"t": spec}, False)
    spans = {w.doc.doc_id: [(s["label"], s["start"], s["end"]) for s in align(w).spans]
             for w in done}
    seconds = time.perf_counter() - t0
    real, padded = counted.real, counted.padded
    return {"docs": len(texts), "seconds": round(seconds, 2), "tokenize_s": round(t_tok, 2),
            "docs_per_s": round(len(texts) / seconds, 2), "real_tokens": real,
            "real_tokens_per_s": round(real / seconds),
            "padding_fraction": round(1 - real / padded, 3),
            "model_gflops_per_s": round(counted.flops / seconds / 1e9),
            "precision": str(clf.dtype),
            **({"compile_s": round(compile_s, 1)} if compile_model else {}),
            "spans": spans}


def run_reference(texts: list[str]) -> dict:
    """The reference loop on the same model and texts, timed after the model is loaded."""
    from transformers import AutoTokenizer

    from bench.reference import hf_logits_fn, reference_entities

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = base_model()
    t0 = time.perf_counter()
    n_windows = real = 0
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=512, stride=128,
                        return_overflowing_tokens=True)
        n_windows += len(enc["input_ids"])
        real += sum(len(x) for x in enc["input_ids"])
        reference_entities(text, tokenizer, hf_logits_fn(model), LABELS)
    seconds = time.perf_counter() - t0
    return {"docs": len(texts), "seconds": round(seconds, 2),
            "docs_per_s": round(len(texts) / seconds, 3), "real_tokens": real,
            "real_tokens_per_s": round(real / seconds),
            "padding_fraction": round(1 - real / (512 * n_windows), 3)}


def matmul_ceiling(tokens: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """GFLOP/s of the encoder's matrix products (shapes of one layer, all tokens)."""
    shapes = [(tokens, 768, 768)] * 4 + [(tokens, 768, 3072), (tokens, 3072, 768)]
    mats = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
            for m, k, n in shapes]
    for a, b in mats:
        a @ b
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        for a, b in mats:
            a @ b
    seconds = time.perf_counter() - t0
    return sum(2 * m * k * n for m, k, n in shapes) * reps / seconds / 1e9


def _child(name: str, args: tuple, queue) -> None:
    fn = {"pipeline": run_pipeline_path, "reference": run_reference, "matmul": matmul_ceiling}
    out = fn[name](*args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((out, round(rss)))


def isolated(name: str, *args):
    """Run a measurement in a fresh process; returns (result, peak RSS in MiB)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, args, queue))
    proc.start()
    while True:
        try:
            out = queue.get(timeout=1)
            break
        except Exception:  # queue.Empty: is the child still working?
            if not proc.is_alive():
                raise RuntimeError(f"the {name} measurement failed (exit code {proc.exitcode})")
    proc.join()
    return out


def agreement(a: dict, b: dict) -> float:
    """Fraction of mentions (strict: document, label, offsets) found by both runs."""
    sa = {(d, *s) for d, v in a.items() for s in v}
    sb = {(d, *s) for d, v in b.items() for s in v}
    return len(sa & sb) / max(len(sa | sb), 1)


def main() -> None:
    """Print the benchmark's figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=30)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch_tokens", type=int, default=8192)
    ap.add_argument("--max_tokens", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder first.")
    args = ap.parse_args()
    texts = documents(args.docs)
    report: dict = {"docs": len(texts), "chars": sum(map(len, texts)),
                    "threads": torch.get_num_threads()}
    ceiling, _ = isolated("matmul")
    report["bf16_matmul_gflops_per_s"] = round(ceiling)
    report["fp32_matmul_gflops_per_s"] = round(isolated("matmul", 8192, torch.float32)[0])
    ref, ref_rss = isolated("reference", texts)
    report["reference"] = {**ref, "peak_rss_mib": ref_rss}
    pipe, pipe_rss = isolated("pipeline", texts, args.precision, args.batch_tokens,
                              args.max_tokens, False, args.compile)
    spans = pipe.pop("spans")
    report["pipeline"] = {**pipe, "peak_rss_mib": pipe_rss}
    big, big_rss = isolated("pipeline", texts * 4, args.precision, args.batch_tokens,
                            args.max_tokens, False, args.compile)
    big.pop("spans")
    report["pipeline_4x_docs"] = {**big, "peak_rss_mib": big_rss}
    report["speedup_docs_per_s"] = round(pipe["docs_per_s"] / ref["docs_per_s"], 2)
    report["mfu_vs_matmul"] = round(pipe["model_gflops_per_s"] / ceiling, 3)
    for name, is_stable in (("stable_model", True), ("random_model", False)):
        runs = {p: isolated("pipeline", texts[:10], p, args.batch_tokens, args.max_tokens,
                            is_stable)[0] for p in ("fp32", "bf16")}
        report[f"bf16_vs_fp32_{name}"] = {
            "span_agreement": round(agreement(runs["fp32"]["spans"], runs["bf16"]["spans"]), 4),
            "mentions_fp32": sum(len(v) for v in runs["fp32"]["spans"].values())}
    del spans
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
