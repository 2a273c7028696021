"""The whole process against the reference scripts: ``python -m bench.whole [--docs 100]``.

On the probe's held-out SPACCC cases and an ``xlm-roberta-base``-sized model (random weights,
saved as a Hugging Face folder), it times ``python -m pipeline.run`` with its defaults (plus
any options given after ``--``) from start to end, twice (cold: a CPU backend converts the
model; warm: the conversion cached, as on every later run), and the reference scripts' loop
(``bench/reference.py``) as a whole process (imports, model, every case), and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.backends import (LABELS, SIZES, TOKENIZER, base_model, documents, heldout_ids, isolated,
                            job)


def reference_process(texts: list[str], size: str = "base") -> float:
    """Wall seconds of the reference loop's whole process: imports, model, every case."""
    t0 = time.perf_counter()
    from transformers import AutoTokenizer

    from bench.reference import hf_logits_fn, reference_entities

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = base_model(size=size)
    with torch.inference_mode():
        for text in texts:
            reference_entities(text, tokenizer, hf_logits_fn(model), LABELS)
    return time.perf_counter() - t0


def whole(texts_dir: Path, work: Path, extra: list[str], size: str = "base") -> dict:
    """The whole job on the base-size model (saved as a Hugging Face folder) vs the reference
    loop's whole process, on the same cases; the job runs twice (cold: converting; warm: the
    conversion cached, as every later night)."""
    model_dir = work / "base"
    base_model(size=size).save_pretrained(model_dir)
    (work / "base.yaml").write_text(
        f"tasks:\n  procedure:\n    kind: hf\n    model: {model_dir}\n"
        f"    tokenizer: {TOKENIZER}\n    languages: [es]\n")
    cold = job(texts_dir, work / "base.yaml", work / "out-cold", *extra)
    warm = job(texts_dir, work / "base.yaml", work / "out-warm", *extra)
    texts = [p.read_text(encoding="utf-8") for p in sorted(texts_dir.glob("*.txt"))]
    ref = isolated(reference_process, texts, size)[0]
    return {"pipeline_cold_s": round(cold, 1), "pipeline_warm_s": round(warm, 1),
            "reference_s": round(ref, 1), "speedup_cold": round(ref / cold, 2),
            "speedup_warm": round(ref / warm, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--size", default="base", choices=SIZES,
                    help="model body (tiny: the same code in seconds, for its smoke test)")
    ap.add_argument("extra", nargs="*", help="options for pipeline.run (after --)")
    args = ap.parse_args()
    ids = heldout_ids()[: args.docs]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("CLINICAL_NER_CACHE", str(work / "cache"))
        cases = work / "cases"
        cases.mkdir()
        for i, text in zip(ids, documents(len(ids), ids)):
            (cases / f"{i}.txt").write_text(text, encoding="utf-8")
        print(json.dumps({"docs": len(ids), "threads": torch.get_num_threads(),
                          **whole(cases, work, args.extra, args.size)}, indent=2))


if __name__ == "__main__":
    main()
