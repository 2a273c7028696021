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
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluate import load_tsv, score

SPACCC = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "spaccc-es"


def all_pairs_score(gold: pd.DataFrame, pred: pd.DataFrame, entity: str | None = None) -> dict:
    """The metric definitions written as plainly as possible: every gold x prediction pair."""
    pred = pred.drop_duplicates(subset=["filename", "label", "start_span", "end_span"])
    if entity:
        gold, pred = gold[gold.label == entity], pred[pred.label == entity]
    cols = ["filename", "label", "start_span", "end_span"]
    g_docs: dict = {}
    p_docs: dict = {}
    for rows, docs in ((gold, g_docs), (pred, p_docs)):
        for f, lab, s, e in rows[cols].itertuples(index=False):
            docs.setdefault(f, []).append((f, lab, int(s), int(e)))
    tp = 0
    gold_best: list[float] = []
    pred_best: list[float] = []
    for doc in set(g_docs) | set(p_docs):
        gs, ps = g_docs.get(doc, []), p_docs.get(doc, [])
        used: set[int] = set()
        for g in gs:
            for j, p in enumerate(ps):
                if j not in used and g == p:
                    used.add(j)
                    tp += 1
                    break

        def f1(a, b) -> float:
            if a[0] != b[0] or a[1] != b[1]:
                return 0.0
            inter = max(0, min(a[3], b[3]) - max(a[2], b[2]))
            if not inter:
                return 0.0
            r, p = inter / (a[3] - a[2]), inter / (b[3] - b[2])
            return 2 * p * r / (p + r)

        gold_best += [max([f1(g, p) for p in ps], default=0.0) for g in gs]
        pred_best += [max([f1(g, p) for g in gs], default=0.0) for p in ps]
    fp, fn = len(pred) - tp, len(gold) - tp
    P = tp / (tp + fp) if tp + fp else 0
    R = tp / (tp + fn) if tp + fn else 0
    cp = sum(pred_best) / len(pred_best) if pred_best else 0.0
    cr = sum(gold_best) / len(gold_best) if gold_best else 0.0

    def rnd(p, r):
        return [round(p, 4), round(r, 4), round(2 * p * r / (p + r) if p + r else 0, 4)]

    return {"strict": rnd(P, R) + [tp, fp, fn], "char_f1": rnd(cp, cr) + [len(gold), len(pred)]}


def as_lists(result: dict) -> dict:
    """The fast scorer's result in ``all_pairs_score``'s shape."""
    return {k: list(result[k].values()) for k in ("strict", "char_f1")}


def perturb(gold: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Predictions from gold: dropped, shifted, stretched, relabelled, duplicated and invented."""
    rng = np.random.default_rng(seed)
    pred = gold.sample(frac=0.85, random_state=seed).copy()
    n = len(pred)
    move = rng.random(n)
    pred.loc[move < 0.2, "start_span"] += rng.integers(-3, 4, (move < 0.2).sum())
    pred.loc[(move >= 0.2) & (move < 0.35), "end_span"] += 5
    pred["end_span"] = np.maximum(pred.end_span, pred.start_span + 1)
    relabel = rng.random(n) < 0.05
    pred.loc[relabel, "label"] = "OTHER"
    extra = gold.sample(frac=0.1, random_state=seed + 1).copy()
    extra["start_span"] += 40
    extra["end_span"] += 40
    dups = pred.sample(frac=0.02, random_state=seed + 2)
    return pd.concat([pred, extra, dups], ignore_index=True)


def synthetic(n: int, seed: int = 0, docs: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` gold spans over documents of ~30 spans and a noisy prediction of each."""
    rng = np.random.default_rng(seed)
    docs = docs or max(1, n // 30)
    f = rng.integers(0, docs, n)
    s = rng.integers(0, 20000, n)
    e = s + rng.integers(1, 60, n)
    lab = rng.choice(["SYMPTOM", "PROCEDURE", "DISEASE"], n)
    gold = pd.DataFrame({"filename": [f"doc{i}" for i in f], "label": lab, "start_span": s,
                         "end_span": e, "text": "x"})
    shift = rng.integers(-5, 6, n)
    pred = gold.assign(start_span=s + shift, end_span=np.maximum(e + shift, s + shift + 1))
    return gold, pred


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
