"""MultiClinAI evaluation, number for number with the official scorer, without all-pairs loops.

``python -m pipeline.evaluate --reference GOLD.tsv --pred PRED.tsv [--entity LABEL]`` prints
the same JSON as ``src/evaluate.py`` of ``nlp4bia-bsc/MultiClinAIEval``:

- strict: a prediction matches a gold mention with the same document, label and offsets, one to
  one; predictions are de-duplicated first, gold is not;
- char_f1: each gold mention scores its best character-overlap F1 against the predictions of
  its document and label (recall is the mean over gold), each prediction its best against gold
  (precision is the mean over predictions);

over the documents the prediction covers (its run's ``documents/`` manifest, a list given, or
else those with a predicted mention; ``--all_documents``: the scorer's union of documents in
gold and predictions). Files are read with
``pandas.read_csv(sep="\\t")`` as the scorer reads them. Beyond it: ``--by label`` and
``--by lang`` breakdowns, ``--table`` for a terminal table, and ``--pred`` may be a pipeline
output directory (all its ``<task>.tsv``; languages from its ``documents/`` manifest).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transforms.language import lang_from_name

REQUIRED_COLUMNS = ["filename", "label", "start_span", "end_span", "text"]


class EvaluationInputError(ValueError):
    """An input file the official scorer would refuse, with the same reason."""


def load_tsv(path: str | Path) -> pd.DataFrame:
    """Read and validate a MultiClinAI TSV as the official scorer does."""
    df = pd.read_csv(path, sep="\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluationInputError(
            f"{path} is missing columns {missing}. Required: {REQUIRED_COLUMNS}")
    df = df[REQUIRED_COLUMNS].copy()
    try:
        df["start_span"] = pd.to_numeric(df["start_span"]).astype(int)
        df["end_span"] = pd.to_numeric(df["end_span"]).astype(int)
    except (ValueError, TypeError) as e:
        raise EvaluationInputError(f"{path}: start_span/end_span must be integers ({e})") from e
    if (df["end_span"] <= df["start_span"]).any():
        raise EvaluationInputError(f"{path}: Invalid spans detected (end_span <= start_span).")
    return df


def load_predictions(path: str | Path) -> pd.DataFrame:
    """A prediction TSV, or every ``*.tsv`` of a pipeline output directory concatenated."""
    path = Path(path)
    if not path.is_dir():
        return load_tsv(path)
    files = sorted(path.glob("*.tsv"))
    if not files:
        raise EvaluationInputError(f"{path} holds no .tsv files")
    return pd.concat([load_tsv(f) for f in files], ignore_index=True)


def _groups(gold: pd.DataFrame, pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """An integer per (document, label); rows with a missing document or label get their own
    group, because the scorer's ``==`` never matches NaN."""
    both = pd.concat([gold[["filename", "label"]], pred[["filename", "label"]]],
                     ignore_index=True)
    codes = pd.MultiIndex.from_frame(both).factorize()[0] if len(both) else np.zeros(0, int)
    codes = np.asarray(codes, dtype=np.int64)
    nan = both["filename"].isna().to_numpy() | both["label"].isna().to_numpy()
    codes[nan] = codes.max(initial=-1) + 1 + np.arange(nan.sum())
    return codes[: len(gold)], codes[len(gold):]


def _overlap_pairs(gs, ge, ggrp, ps, pe, pgrp) -> tuple[np.ndarray, np.ndarray]:
    """All (gold, prediction) index pairs of one group whose spans overlap, by binary search.

    Predictions are sorted by (group, start); a gold span's candidates are those starting in
    ``[start - longest prediction of its group, end)``, so the work is proportional to the
    overlapping pairs, not to all pairs.
    """
    if len(gs) == 0 or len(ps) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    shift = min(gs.min(), ps.min())
    gs, ge, ps, pe = gs - shift, ge - shift, ps - shift, pe - shift
    stride = int(max(ge.max(), pe.max())) + 1
    order = np.lexsort((ps, pgrp))
    pkey = pgrp[order] * stride + ps[order]
    n_groups = int(max(ggrp.max(), pgrp.max())) + 1
    longest = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(longest, pgrp, pe - ps)
    lo = np.searchsorted(pkey, ggrp * stride + np.maximum(gs - longest[ggrp], 0), side="left")
    hi = np.searchsorted(pkey, ggrp * stride + ge, side="left")
    counts = np.maximum(hi - lo, 0)
    gi = np.repeat(np.arange(len(gs)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pj = order[np.repeat(lo, counts) + offsets]
    keep = (np.minimum(ge[gi], pe[pj]) - np.maximum(gs[gi], ps[pj])) > 0
    return gi[keep], pj[keep]


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    precision = tp / (tp + fp) if (tp + fp) else 0
    recall = tp / (tp + fn) if (tp + fn) else 0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn}


def _char_prf(precision: float, recall: float, n_gold: int, n_pred: int) -> dict[str, Any]:
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "n_gold": n_gold, "n_pred": n_pred}


def score(gold: pd.DataFrame, pred: pd.DataFrame, entity: str | None = None) -> dict[str, Any]:
    """The official scorer's result for validated frames (predictions de-duplicated here)."""
    pred = pred.drop_duplicates(subset=["filename", "label", "start_span", "end_span"])
    if entity:
        gold, pred = gold[gold.label == entity], pred[pred.label == entity]
    ggrp, pgrp = _groups(gold, pred)
    gs, ge = gold.start_span.to_numpy(np.int64), gold.end_span.to_numpy(np.int64)
    ps, pe = pred.start_span.to_numpy(np.int64), pred.end_span.to_numpy(np.int64)

    # Strict: predictions are unique per (group, start, end), so each distinct gold key matches
    # at most one prediction; repeated gold mentions beyond the first are misses.
    gkeys = pd.MultiIndex.from_arrays([ggrp, gs, ge]).unique()
    pkeys = pd.MultiIndex.from_arrays([pgrp, ps, pe])
    tp = int(pkeys.isin(gkeys).sum())
    strict = _prf(tp, len(pred) - tp, len(gold) - tp)

    gi, pj = _overlap_pairs(gs, ge, ggrp, ps, pe, pgrp)
    inter = (np.minimum(ge[gi], pe[pj]) - np.maximum(gs[gi], ps[pj])).astype(np.float64)
    r = inter / (ge[gi] - gs[gi])
    p = inter / (pe[pj] - ps[pj])
    f = 2 * p * r / (p + r)
    best_gold = np.zeros(len(gold))
    best_pred = np.zeros(len(pred))
    np.maximum.at(best_gold, gi, f)
    np.maximum.at(best_pred, pj, f)
    recall = math.fsum(best_gold) / len(gold) if len(gold) else 0.0
    precision = math.fsum(best_pred) / len(pred) if len(pred) else 0.0
    return {"entity": entity, "strict": strict,
            "char_f1": _char_prf(precision, recall, len(gold), len(pred))}


def evaluate(reference: str | Path, pred: str | Path, entity: str | None = None) -> dict:
    """Score a prediction TSV (or pipeline output directory) against a gold TSV."""
    return score(load_tsv(reference), load_predictions(pred), entity)


def document_languages(documents: pd.DataFrame) -> pd.Series:
    """doc_id -> language from a pipeline documents table (the first row of an id; documents
    without a language left out)."""
    docs = documents[["doc_id", "lang"]].dropna()
    return docs.drop_duplicates("doc_id").set_index("doc_id")["lang"]


def languages(gold: pd.DataFrame, pred: pd.DataFrame, known: pd.Series | None) -> pd.Series:
    """Language per document: ``known`` (doc_id -> lang), else ``MultiClinNER-<lang>-`` names."""
    names = pd.Series(pd.concat([gold.filename, pred.filename]).dropna().unique())
    lang = names.astype(str).map(lang_from_name)
    lang.index = names
    if known is not None:
        lang = known.reindex(names.astype(str)).set_axis(names).fillna(lang)
    return lang.fillna("und")


def breakdown(gold: pd.DataFrame, pred: pd.DataFrame, by: str,
              known_langs: pd.Series | None = None) -> dict[str, dict]:
    """Official metrics per label or per language (see ``languages``)."""
    if by == "label":
        labels = sorted(set(gold.label.dropna()) | set(pred.label.dropna()), key=str)
        return {str(lab): score(gold, pred, lab) for lab in labels}
    lang = languages(gold, pred, known_langs)
    out = {}
    for code in sorted(lang.unique()):
        docs = set(lang.index[lang == code])
        out[code] = score(gold[gold.filename.isin(docs)], pred[pred.filename.isin(docs)])
    return out


def format_table(result: dict) -> str:
    """A terminal table: overall, then each breakdown row."""
    rows = [("all", result)]
    for by in ("by_label", "by_lang"):
        rows += [(f"{by[3:]}={k}", v) for k, v in result.get(by, {}).items()]
    head = (f"{'':<22}{'strict P':>9}{'R':>8}{'F1':>8}{'TP':>8}{'FP':>8}{'FN':>8}"
            f"{'char P':>9}{'R':>8}{'F1':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        s, c = r["strict"], r["char_f1"]
        lines.append(f"{name[:22]:<22}{s['precision']:>9.4f}{s['recall']:>8.4f}{s['f1']:>8.4f}"
                     f"{s['tp']:>8}{s['fp']:>8}{s['fn']:>8}"
                     f"{c['precision']:>9.4f}{c['recall']:>8.4f}{c['f1']:>8.4f}")
    return "\n".join(lines)


def scope(preds: list[Path], documents: Path | None, listed: Path | None
          ) -> tuple[set[str] | None, str]:
    """The documents to score and how they were found: a list given, else the runs' document
    manifests (a prediction folder's ``documents/``, or one beside a prediction TSV), else the
    documents with a predicted mention (a TSV alone does not name the others)."""
    if listed is not None:
        ids = {line.strip() for line in listed.read_text(encoding="utf-8").splitlines()
               if line.strip()}
        return ids, f"the {len(ids)} documents listed in {listed}"
    manifests = [documents] if documents else [
        p / "documents" if p.is_dir() else p.parent / "documents" for p in preds]
    if all(m.exists() for m in manifests):
        ids = set().union(*(pd.read_parquet(m, columns=["doc_id"]).doc_id.astype(str)
                            for m in manifests))
        return ids, (f"the {len(ids)} documents of the run ({', '.join(map(str, manifests))})")
    return None, "the documents with a predicted mention (pass --documents or --doc_list to " \
                 "include those the model found nothing in)"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluate",
                                 description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("--reference", type=Path, action="append", required=True,
                    help="Gold TSV; repeat it for several (they are concatenated).")
    ap.add_argument("--pred", type=Path, action="append", required=True,
                    help="Prediction TSV or pipeline output directory; repeatable.")
    ap.add_argument("--entity", default=None, help="Evaluate this label only.")
    ap.add_argument("--by", action="append", choices=["label", "lang"], default=[],
                    help="Add per-label / per-language results (repeatable).")
    ap.add_argument("--documents", type=Path, default=None,
                    help="The run's documents/ manifest: which documents it covered and their "
                         "languages (default: PRED/documents, or documents/ beside PRED.tsv).")
    ap.add_argument("--doc_list", type=Path, default=None,
                    help="Score only these documents (a file with one id per line).")
    ap.add_argument("--all_documents", action="store_true",
                    help="Score the union of the gold's and the predictions' documents, as the "
                         "official scorer does (gold of documents never run counts as missed).")
    ap.add_argument("--table", action="store_true", help="Print a table instead of JSON.")
    args = ap.parse_args(argv)
    try:
        gold = pd.concat([load_tsv(r) for r in args.reference], ignore_index=True)
        pred = pd.concat([load_predictions(p) for p in args.pred], ignore_index=True)
        ids, how = (None, "every document of the gold and the predictions") \
            if args.all_documents else scope(args.pred, args.documents, args.doc_list)
    except (EvaluationInputError, FileNotFoundError) as e:
        sys.exit(f"pipeline.evaluate: {e}")
    if not args.all_documents:
        ids = ids if ids is not None else set(pred.filename.astype(str))
        left = ~gold.filename.astype(str).isin(ids)
        print(f"pipeline.evaluate: scoring {how}; {gold[left].filename.nunique()} gold "
              f"documents ({int(left.sum())} mentions) left out (--all_documents keeps them)",
              file=sys.stderr)
        gold, pred = gold[~left], pred[pred.filename.astype(str).isin(ids)]
    result = score(gold, pred, args.entity)
    manifest = args.documents or next((p / "documents" for p in args.pred if p.is_dir()), None)
    if args.entity:
        gold, pred = gold[gold.label == args.entity], pred[pred.label == args.entity]
    known = (document_languages(pd.read_parquet(manifest, columns=["doc_id", "lang"]))
             if manifest and manifest.exists() else None)
    for by in dict.fromkeys(args.by):
        result[f"by_{by}"] = breakdown(gold, pred, by, known)
    print(format_table(result) if args.table else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
