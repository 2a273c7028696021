"""MultiClinAI scoring, number for number with the official scorer (``src/evaluate.py`` of
``nlp4bia-bsc/MultiClinAIEval``), without all-pairs loops: what ``pipeline.evaluate`` prints and
the report shows.

- strict: a prediction matches a gold mention with the same document, label and offsets, one to
  one; predictions are de-duplicated first, gold is not;
- char_f1: each gold mention scores its best character-overlap F1 against the predictions of
  its document and label (recall is the mean over gold), each prediction its best against gold
  (precision is the mean over predictions).

Files are read with ``pandas.read_csv(sep="\\t")`` as the scorer reads them.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transforms.inference.language import lang_from_name

REQUIRED_COLUMNS = ["filename", "label", "start_span", "end_span", "text"]


CODES_SUFFIX = "_codes.tsv"  # a pipeline output's coded mentions, beside its <task>.tsv
NO_CODE = "NO_CODE"


class EvaluationInputError(ValueError):
    """An input file the official scorer would refuse, with the same reason."""


def load_tsv(path: str | Path) -> pd.DataFrame:
    """Read and validate a MultiClinAI TSV as the official scorer does (a ``code`` column, as
    the entity-linking tasks' files have, is kept)."""
    df = pd.read_csv(path, sep="\t", dtype={"code": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluationInputError(
            f"{path} is missing columns {missing}. Required: {REQUIRED_COLUMNS}")
    df = df[[*REQUIRED_COLUMNS, *(["code"] if "code" in df.columns else [])]].copy()
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
    files = sorted(f for f in path.glob("*.tsv") if not f.name.endswith(CODES_SUFFIX))
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


def load_codes(path: str | Path) -> pd.DataFrame:
    """Predicted codes: a pipeline output directory's span rows (each mention's code and its
    candidate codes, best first; for a task's TSV in an output directory, its mentions' rows),
    or a TSV with a ``code`` column (its code alone)."""
    path = Path(path)
    if path.is_dir() and (path / "spans").exists():
        spans = pd.read_parquet(path / "spans", columns=["doc_id", "label", "start", "end",
                                                          "code", "link_candidates"])
        return pd.DataFrame({"filename": spans.doc_id, "label": spans.label,
                             "start_span": spans.start, "end_span": spans.end,
                             "code": spans.code, "candidates": [
                                 list(c) if c is not None else [] for c in spans.link_candidates]})
    pred = load_tsv(path)
    if "code" not in pred and (path.parent / "spans").exists():  # a task's TSV in its output
        key = ["filename", "label", "start_span", "end_span"]
        return load_codes(path.parent).merge(pred[key].drop_duplicates(), on=key)
    if "code" not in pred:
        raise EvaluationInputError(f"{path} has no `code` column and no spans/ to read codes from")
    pred["code"] = pred.code.where(pred.code != NO_CODE)
    pred["candidates"] = [[c] if isinstance(c, str) else [] for c in pred.code]
    return pred


def linking(gold: pd.DataFrame, pred: pd.DataFrame, k: int = 5) -> dict[str, Any]:
    """Entity linking against gold with codes (its ``NO_CODE`` mentions left out): accuracy@1
    and @k over the gold mentions the prediction found (same document, label and offsets), and
    strict P/R/F1 where the code must match too."""
    key = ["filename", "label", "start_span", "end_span"]
    gold = gold[gold.code.notna() & (gold.code != NO_CODE)]
    pred = pred.drop_duplicates(subset=key)
    found = gold.merge(pred, on=key, suffixes=("", "_pred"))
    at1 = (found.code == found.code_pred).to_numpy()
    atk = np.array([c in cands[:k] for c, cands in zip(found.code, found.candidates)], bool)
    tp = int(at1.sum())
    return {"found": len(found), "accuracy@1": round(float(at1.mean()), 4) if len(found) else 0.0,
            f"accuracy@{k}": round(float(atk.mean()), 4) if len(found) else 0.0,
            "strict_with_code": _prf(tp, int(pred.code.notna().sum()) - tp, len(gold) - tp)}
