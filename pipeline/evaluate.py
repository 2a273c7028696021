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
output directory (all its ``<task>.tsv``; languages from its ``documents/`` manifest). Gold
with a ``code`` column (the entity-linking tasks' format) adds ``linking``: accuracy@1 and @k
(``--k``) on the gold mentions found, and strict F1 where the code must match too (per label
and language with ``--by``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.scoring import (EvaluationInputError, breakdown, document_languages, languages,
                              linking, load_codes, load_predictions, load_tsv, score)


def format_table(result: dict) -> str:
    """A terminal table: overall, then each breakdown row; then linking's, where scored."""
    lines = [_spans_table(result)]
    if "linking" in result:
        lines.append(_linking_table(result["linking"]))
    return "\n\n".join(lines)


def _linking_table(linking: dict) -> str:
    rows = [("all", linking), *((f"{by[3:]}={k}", v) for by in ("by_label", "by_lang")
                                for k, v in linking.get(by, {}).items())]
    at_k = next(k for k in linking if k.startswith("accuracy@") and k != "accuracy@1")
    head = (f"{'linking':<22}{'found':>8}{'acc@1':>8}{at_k.replace('accuracy', 'acc'):>8}"
            f"{'code P':>9}{'R':>8}{'F1':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        s = r["strict_with_code"]
        lines.append(f"{name[:22]:<22}{r['found']:>8}{r['accuracy@1']:>8.4f}{r[at_k]:>8.4f}"
                     f"{s['precision']:>9.4f}{s['recall']:>8.4f}{s['f1']:>8.4f}")
    return "\n".join(lines)


def _spans_table(result: dict) -> str:
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


def say_failed(args: argparse.Namespace, scored: set[str]) -> None:
    """Name the scored documents that failed in the run (its ``documents/`` manifests say):
    their gold counts as missed."""
    manifests = [args.documents] if args.documents else [
        p / "documents" if p.is_dir() else p.parent / "documents" for p in args.pred]
    tables = [pd.read_parquet(m) for m in manifests if m.exists()]
    failed = sorted({str(d) for t in tables if "status" in t
                     for d in t.doc_id[t.status == "failed"]} & scored)
    if failed:
        named = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10
                                          else "")
        print(f"pipeline.evaluate: {len(failed)} of the {len(scored)} scored documents failed "
              f"in the run, so their gold counts as missed: {named} (the run's documents/ "
              "says why)", file=sys.stderr)


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
    ap.add_argument("--all_labels", action="store_true",
                    help="Count predictions of labels the gold has no mention of as false "
                         "positives, as the official scorer does (default: left out, and said).")
    ap.add_argument("--table", action="store_true", help="Print a table instead of JSON.")
    ap.add_argument("--k", type=int, default=5,
                    help="Linking accuracy@k: the gold code among the first k candidates.")
    args = ap.parse_args(argv)
    try:
        gold = pd.concat([load_tsv(r) for r in args.reference], ignore_index=True)
        pred = pd.concat([load_predictions(p) for p in args.pred], ignore_index=True)
        codes = (pd.concat([load_codes(p) for p in args.pred], ignore_index=True)
                 if "code" in gold else None)
        ids, how = (None, "every document of the gold and the predictions") \
            if args.all_documents else scope(args.pred, args.documents, args.doc_list)
    except (EvaluationInputError, FileNotFoundError, pd.errors.ParserError) as e:
        sys.exit(f"pipeline.evaluate: {e}")
    gold_labels = set(gold.label.dropna())  # of every gold document: scored or not
    if not args.all_documents:
        ids = ids if ids is not None else set(pred.filename.astype(str))
        left = ~gold.filename.astype(str).isin(ids)
        print(f"pipeline.evaluate: scoring {how}; {gold[left].filename.nunique()} gold "
              f"documents ({int(left.sum())} mentions) left out (--all_documents keeps them)",
              file=sys.stderr)
        gold, pred = gold[~left], pred[pred.filename.astype(str).isin(ids)]
        if codes is not None:
            codes = codes[codes.filename.astype(str).isin(ids)]
        say_failed(args, ids)
    unlabelled = sorted(set(pred.label.dropna()) - gold_labels)
    if unlabelled and not args.entity and not args.all_labels:
        dropped = pred.label.isin(unlabelled)
        print(f"pipeline.evaluate: the gold has no {', '.join(map(str, unlabelled))} mention: "
              f"those {int(dropped.sum())} predictions are left out (--all_labels counts them "
              "as false positives, as the official scorer does)", file=sys.stderr)
        pred = pred[~dropped]
        if codes is not None:
            codes = codes[~codes.label.isin(unlabelled)]
    result = score(gold, pred, args.entity)
    manifest = args.documents or next((p / "documents" for p in args.pred if p.is_dir()), None)
    if args.entity:
        gold, pred = gold[gold.label == args.entity], pred[pred.label == args.entity]
        if codes is not None:
            codes = codes[codes.label == args.entity]
    known = (document_languages(pd.read_parquet(manifest, columns=["doc_id", "lang"]))
             if manifest and manifest.exists() else None)
    for by in dict.fromkeys(args.by):
        result[f"by_{by}"] = breakdown(gold, pred, by, known)
    if codes is not None:
        result["linking"] = linking(gold, codes, args.k)
        if "label" in args.by:
            result["linking"]["by_label"] = {str(lab): linking(gold[gold.label == lab], codes[
                codes.label == lab], args.k) for lab in sorted(set(gold.label.dropna()))}
        if "lang" in args.by:
            lang = languages(gold, codes, known)
            result["linking"]["by_lang"] = {code: linking(
                gold[gold.filename.isin(set(lang.index[lang == code]))],
                codes[codes.filename.isin(set(lang.index[lang == code]))], args.k)
                for code in sorted(lang.unique())}
    print(format_table(result) if args.table else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
