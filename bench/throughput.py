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
import time

import torch

from bench.backends import (LABELS, SIZES, TOKENIZER, agreement, base_model, documents,
                            isolated, matmul_ceiling, pipeline_path)


def run_reference(texts: list[str], size: str = "base") -> dict:
    """The reference loop on the same model and texts, timed after the model is loaded."""
    from transformers import AutoTokenizer

    from bench.reference import hf_logits_fn, reference_entities

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = base_model(size=size)
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


def main() -> None:
    """Print the benchmark's figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=30)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch_tokens", type=int, default=8192)
    ap.add_argument("--max_tokens", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder first.")
    ap.add_argument("--size", default="base", choices=SIZES,
                    help="model body (tiny: the same code in seconds, for its smoke test)")
    args = ap.parse_args()
    texts = documents(args.docs)
    report: dict = {"docs": len(texts), "chars": sum(map(len, texts)),
                    "threads": torch.get_num_threads()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ceiling, _ = isolated(matmul_ceiling, 8192, torch.bfloat16, device)
    report["bf16_matmul_gflops_per_s"] = round(ceiling)
    report["fp32_matmul_gflops_per_s"] = round(isolated(matmul_ceiling, 8192, torch.float32,
                                                        device)[0])
    ref, ref_rss = isolated(run_reference, texts, args.size)
    report["reference"] = {**ref, "peak_rss_mib": ref_rss}
    pipe, pipe_rss = isolated(pipeline_path, texts, args.precision, args.batch_tokens,
                              args.max_tokens, False, args.compile, "torch", args.size)
    spans = pipe.pop("spans")
    report["pipeline"] = {**pipe, "peak_rss_mib": pipe_rss}
    big, big_rss = isolated(pipeline_path, texts * 4, args.precision, args.batch_tokens,
                            args.max_tokens, False, args.compile, "torch", args.size)
    big.pop("spans")
    report["pipeline_4x_docs"] = {**big, "peak_rss_mib": big_rss}
    report["speedup_docs_per_s"] = round(pipe["docs_per_s"] / ref["docs_per_s"], 2)
    report["mfu_vs_matmul"] = round(pipe["model_gops_per_s"] / ceiling, 3)
    for name, is_stable in (("stable_model", True), ("random_model", False)):
        runs = {p: isolated(pipeline_path, texts[:10], p, args.batch_tokens, args.max_tokens,
                            is_stable, False, "torch", args.size)[0] for p in ("fp32", "bf16")}
        report[f"bf16_vs_fp32_{name}"] = {
            "span_agreement": round(agreement(runs["fp32"]["spans"], runs["bf16"]["spans"]), 4),
            "mentions_fp32": sum(len(v) for v in runs["fp32"]["spans"].values())}
    del spans
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
