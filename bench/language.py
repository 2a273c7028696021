"""Benchmark of language detection on the real E3C notes (es, en, it) of ``../shared``.

``python -m bench.language [--lingua_sample 300]`` prints, per language and overall,
the accuracy and single-core documents/s of: fastText alone (``lid.176``, lower-cased 1,000
character prefix), Lingua alone (on a sample: it is slow), and the pipeline's detector
(fastText, with Lingua's second opinion where fastText is unsure).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

from transforms.inference.language import LOOKALIKES, LanguageDetector

SHARED = Path(os.environ.get("CLINICAL_NER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
E3C = SHARED / "corpora" / "e3c-layer3"
LANGS = ("es", "en", "it")


def load(lang: str) -> list[str]:
    """The texts of one E3C language file."""
    with gzip.open(E3C / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def measure(detect, corpus: dict[str, list[str]]) -> dict:
    """Accuracy per language and documents/s over the whole corpus."""
    out, n, t = {}, 0, 0.0
    for lang, texts in corpus.items():
        t0 = time.perf_counter()
        got = [detect(x) for x in texts]
        t += time.perf_counter() - t0
        n += len(texts)
        out[lang] = {"docs": len(texts), "accuracy": round(sum(g == lang for g in got) / len(texts), 4),
                     "und": sum(g == "und" for g in got)}
    out["docs_per_s"] = round(n / t)
    return out


def main() -> None:
    """Print the benchmark's figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lingua_sample", type=int, default=300)
    args = ap.parse_args()
    corpus = {lang: load(lang) for lang in LANGS}
    t0 = time.perf_counter()
    detector = LanguageDetector(LOOKALIKES)
    load_s = time.perf_counter() - t0
    first_pass_only = LanguageDetector(LOOKALIKES, second_opinion_below=0.0)
    lingua_only = LanguageDetector(LOOKALIKES, second_opinion_below=2.0)
    sample = {lang: texts[: args.lingua_sample] for lang, texts in corpus.items()}
    report = {
        "fasttext_only": measure(lambda x: first_pass_only.detect(x).lang, corpus),
        f"lingua_only_first_{args.lingua_sample}": measure(lambda x: lingua_only.detect(x).lang,
                                                           sample),
        "pipeline_detector": measure(lambda x: detector.detect(x).lang, corpus),
        "detector_load_s": round(load_s, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
