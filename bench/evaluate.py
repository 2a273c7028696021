"""Benchmark of ``pipeline.evaluate`` against a straightforward all-pairs scorer.

``python -m bench.evaluate [--spans 1000000]`` times, on this machine:
(1) the real SPACCC gold of ``../shared/corpora/spaccc-es`` against perturbed predictions, with
both implementations (and checks they agree), and (2) a synthetic set of ``--spans`` gold and
as many predicted spans with the fast scorer alone (the all-pairs one is timed on a sample and
extrapolated, since it is quadratic per document).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pipeline.scoring import load_tsv, score
from tests.fixtures.scoring import all_pairs_score, as_lists, perturb, synthetic

SHARED = Path(os.environ.get("CLINICAL_NER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SPACCC = SHARED / "corpora" / "spaccc-es"


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    """Print the benchmark's figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    args = ap.parse_args()
    report = {}
    for name in ("symptom", "procedure"):
        gold = load_tsv(SPACCC / f"gold_{name}.tsv")
        pred = perturb(gold)
        fast, t_fast = timed(score, gold, pred)
        slow, t_slow = timed(all_pairs_score, gold, pred)
        assert as_lists(fast) == slow, (fast, slow)
        report[f"spaccc_{name}"] = {"gold": len(gold), "pred": len(pred), "fast_s": round(t_fast, 3),
                                    "all_pairs_s": round(t_slow, 3),
                                    "speedup": round(t_slow / t_fast, 1),
                                    "char_f1": fast["char_f1"]["f1"], "strict_f1": fast["strict"]["f1"]}
    gold, pred = synthetic(args.spans)
    fast, t_fast = timed(score, gold, pred)
    sample_docs = set(gold.filename.unique()[:200])
    gs, ps = gold[gold.filename.isin(sample_docs)], pred[pred.filename.isin(sample_docs)]
    _, t_sample = timed(all_pairs_score, gs, ps)
    report["synthetic"] = {"gold": len(gold), "pred": len(pred), "fast_s": round(t_fast, 2),
                           "all_pairs_s_extrapolated": round(t_sample * len(gold) / len(gs), 1),
                           "under_a_minute": t_fast < 60}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
