"""A run's report: ``python -m pipeline.report OUT [--gold GOLD.tsv ...] [--hide_texts]``.

Writes ``OUT/report.html``: one self-contained page (plots as inline SVG drawn with matplotlib,
no script, nothing fetched) with the run's figures, mentions per label and language, documents
per language and state, document length and spans-per-document distributions, throughput, the
most frequent mention texts per label (``--hide_texts`` leaves every mention text out of the
page, for reports that leave the secure zone) and, given gold TSVs, the MultiClinAI evaluation.
``OUT`` may be any fsspec URL.
"""

from __future__ import annotations

import argparse
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import fsspec
import matplotlib
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.scoring import breakdown, document_languages, load_tsv, score
from transforms.core.qualify import FLAGS
from transforms.io.storage import iter_parquet_dir, read_parquet_dir, write_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402



def _short(x: float, _=None) -> str:
    """An axis number that stays short: 1,600; 25k; 1.2M."""
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g}M"
    return f"{x / 1e3:.3g}k" if abs(x) >= 1e4 else f"{x:,.0f}"


_THOUSANDS = FuncFormatter(_short)

TOP_TEXTS = 15


@dataclass
class RunOutputs:
    """What the report reads from an output directory: the documents table, the span counts
    of annotated documents (the spans themselves are read a file at a time), and
    ``run.json``."""

    out: str
    documents: pd.DataFrame
    mentions: pd.DataFrame  # label, lang, n
    texts: pd.DataFrame | None  # label, text, n (None: texts must not be shown)
    record: dict[str, Any]
    qualified: pd.DataFrame  # label, <flag>_known, <flag> (mentions a qualifier ran on, flagged)
    codes: pd.DataFrame  # label, code, code_term, band, n: mentions a linker covers (code
    # null: none; band: the code's score band, BANDS)
    left_out: int = 0  # mentions of documents that are not annotated (in none of the above)


# A code's score bands, best first: an exact match, then character n-gram or bi-encoder
# similarities (fused codes, ranked by reciprocal rank fusion, have no similarity)
BANDS = (("exact", None), ("0.9 to 1", 0.9), ("0.7 to 0.9", 0.7), ("0.5 to 0.7", 0.5),
         ("below 0.5", 0.0))


def _bands(table: pa.Table) -> pa.Array:
    """Each row's score band (null where it has no code; ``fused`` for fused ranks)."""
    method = table["link_method"].to_pylist()
    score = table["link_score"].to_pylist()
    return pa.array([None if m is None else m if m in ("exact", "fused")  # float32 scores:
                     else next((name for name, low in BANDS[1:]  # 0.9 is read 0.89999998
                                if round(s or 0.0, 6) >= low), BANDS[-1][0])
                     for m, s in zip(method, score)], pa.string())


def _count(table: pa.Table, keys: list[str]) -> pd.DataFrame:
    """Rows of ``table`` per distinct ``keys`` (column ``n``)."""
    counts = table.group_by(keys).aggregate([([], "count_all")]).to_pandas()
    return counts.rename(columns={"count_all": "n"})


def load_outputs(out: str, with_texts: bool = True) -> RunOutputs:
    """Read ``out`` for the report; memory grows with documents and distinct mention texts,
    not with mentions."""
    out = out.rstrip("/")
    fs, root = fsspec.core.url_to_fs(out)
    if not fs.exists(f"{root}/documents"):
        raise FileNotFoundError(f"{out}: no documents/ here; is it a pipeline output?")
    documents = read_parquet_dir(f"{out}/documents", [
        "doc_id", "lang", "n_chars", "tasks", "status", "reason", "n_spans"]).to_pandas()
    annotated = pa.array(documents.doc_id[documents.status == "annotated"], pa.string())
    mentions, texts, qualified, codes = [], [], [], []
    columns = ["doc_id", "label", "lang", *FLAGS, "code", "code_term", "link_score",
               "link_method", "link_candidates"] + ["text"] * with_texts
    left_out = 0  # mentions of documents that failed after their spans were found
    for t in iter_parquet_dir(f"{out}/spans", columns):
        kept = t.filter(pc.is_in(t["doc_id"], value_set=annotated))
        left_out += len(t) - len(kept)
        t = kept
        mentions.append(_count(t, ["label", "lang"]))
        if with_texts:
            texts.append(_count(t, ["label", "text"]))
        qualified.append(_flag_counts(t))
        if "link_candidates" in t.column_names:
            covered = t.filter(pc.invert(pc.is_null(t["link_candidates"])))
            covered = covered.select(["label", "code", "code_term"]).append_column(
                "band", _bands(covered))
            codes.append(_count(covered, ["label", "code", "code_term", "band"]))
    record = json.loads(fs.cat(f"{root}/run.json")) if fs.exists(f"{root}/run.json") else {}
    flag_columns = [c for flag in FLAGS for c in (f"{flag}_known", flag)]
    return RunOutputs(out, documents, _sum(mentions, ["label", "lang"]),
                      _sum(texts, ["label", "text"]) if with_texts else None, record,
                      _sum(qualified, ["label"], flag_columns),
                      _sum(codes, ["label", "code", "code_term", "band"]), left_out)


def _flag_counts(table: pa.Table) -> pd.DataFrame:
    """Per label, the mentions a qualifier ran on (``<flag>_known``) and those it flagged
    (``<flag>``); outputs written before the flags existed count none."""
    flags = [f for f in FLAGS if f in table.column_names]
    counts = table.group_by(["label"]).aggregate(
        [(f, agg) for f in flags for agg in ("count", "sum")]).to_pandas()
    for f in FLAGS:
        counts[f"{f}_known"] = counts.pop(f"{f}_count") if f in flags else 0
        counts[f] = counts.pop(f"{f}_sum").fillna(0).astype(int) if f in flags else 0
    return counts


def _sum(counts: list[pd.DataFrame], keys: list[str], values: Sequence[str] = ("n",)
         ) -> pd.DataFrame:
    if not counts:
        return pd.DataFrame(columns=[*keys, *values])
    return pd.concat(counts).groupby(keys, dropna=False, as_index=False)[list(values)].sum()


def predictions_of(out: str, doc_ids: set[str]) -> pd.DataFrame:
    """The spans of some documents, in the scorer's columns."""
    ids = pa.array(sorted(doc_ids), pa.string())
    tables = [t.filter(pc.is_in(t["doc_id"], value_set=ids)) for t in iter_parquet_dir(
        f"{out}/spans", ["doc_id", "label", "start", "end"])]
    pred = (pa.concat_tables(tables).to_pandas() if tables else
            pd.DataFrame(columns=["doc_id", "label", "start", "end"]))
    pred = pred.rename(columns={"doc_id": "filename", "start": "start_span", "end": "end_span"})
    return pred.assign(text="")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _bars(table: pd.DataFrame, title: str, xlabel: str, stacked: bool) -> str:
    """Horizontal bars, one row per index value, one colour per column."""
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * max(len(table), 2) + 1.4))
    if table.empty:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        table.plot.barh(ax=ax, stacked=stacked, width=0.8)
        ax.invert_yaxis()
        ax.legend(title=table.columns.name, fontsize=8, title_fontsize=8, frameon=False,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_ylabel("")
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.xaxis.set_major_formatter(_THOUSANDS)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _histogram(values: pd.Series, title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    values = values.dropna()
    if values.empty:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.hist(values, bins=40, color="C0")
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.xaxis.set_major_formatter(_THOUSANDS)
        ax.axvline(values.median(), color="C1", linestyle="--",
                   label=f"median {values.median():,.0f}")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.set_title(title, loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def figures(run: RunOutputs) -> dict[str, str]:
    """The report's plots as SVG, by title."""
    docs = run.documents
    mentions = run.mentions.fillna({"lang": "none"}).pivot_table(
        index="label", columns="lang", values="n", aggfunc="sum", fill_value=0).rename_axis(
        index=None, columns="language")
    states = pd.crosstab(docs.lang.fillna("none"), docs.status).rename_axis(
        index=None, columns="state")
    with_text = docs[docs.n_chars > 0]
    annotated = docs[docs.status == "annotated"]
    return {
        "Mentions per label and language": _bars(mentions, "Mentions per label and language",
                                                 "mentions", stacked=False),
        "Documents per language and state": _bars(states, "Documents per language and state",
                                                  "documents", stacked=True),
        "Document length": _histogram(with_text.n_chars, "Document length", "characters"),
        "Spans per document": _histogram(annotated.n_spans, "Spans per annotated document",
                                         "spans (all tasks)"),
    }


def top_texts(texts: pd.DataFrame, n: int = TOP_TEXTS) -> dict[str, pd.DataFrame]:
    """The ``n`` most frequent mention texts of each label (case and spacing as written)."""
    return {label: g.sort_values(["n", "text"], ascending=[False, True]).head(n)[["text", "n"]]
            for label, g in texts.groupby("label", sort=True)}


def evaluation(run: RunOutputs, gold_paths: Sequence[str]) -> dict[str, Any]:
    """MultiClinAI scores of the run's spans against gold TSVs, overall, by label and language,
    over the documents of the run (gold of other documents is left out and counted)."""
    gold = pd.concat([load_tsv(p) for p in gold_paths], ignore_index=True)
    run_ids = set(run.documents.doc_id)
    mine = gold.filename.astype(str).isin(run_ids)
    outside = gold[~mine].filename.nunique()
    gold = gold[mine]
    pred = predictions_of(run.out, set(gold.filename.astype(str)))
    known = document_languages(run.documents)
    return {**score(gold, pred), "by_label": breakdown(gold, pred, "label"),
            "by_lang": breakdown(gold, pred, "lang", known),
            "gold_documents": gold.filename.nunique(), "gold_documents_not_in_run": outside}


def _when(stamp: str | None) -> str:
    """An ISO time to the second, in UTC (``2026-11-27 03:04:07 UTC``)."""
    if not stamp:
        return "?"
    try:
        moment = datetime.fromisoformat(stamp).astimezone(timezone.utc)
    except ValueError:
        return stamp
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    def cell(v: Any, tag: str, i: int) -> str:
        cls = ' class="num"' if i >= numeric_from else ""
        if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
            v = f"{int(v):,}"  # a count that went through a float (1252126.0): not a score
        elif isinstance(v, float):
            v = f"{v:.4f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    head = "".join(cell(h, "th", i) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(v, "td", i) for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _evaluation_html(result: dict[str, Any]) -> str:
    rows = [("all", result)] + [(f"label {k}", v) for k, v in result["by_label"].items()] + [
        (f"language {k}", v) for k, v in result["by_lang"].items()]
    table = _table(
        ["", "strict P", "strict R", "strict F1", "TP", "FP", "FN", "char P", "char R",
         "char F1"],
        [(name, float(s["precision"]), float(s["recall"]), float(s["f1"]), s["tp"], s["fp"],
          s["fn"], float(c["precision"]), float(c["recall"]), float(c["f1"]))
         for name, r in rows for s, c in [(r["strict"], r["char_f1"])]])
    note = (f"{result['gold_documents']:,} documents of this run have gold mentions; gold of "
            f"{result['gold_documents_not_in_run']:,} other documents is left out.")
    return f'{table}<p class="muted">{note}</p>'



def _qualifiers_html(qualified: pd.DataFrame) -> str:
    """The share of negated and uncertain mentions per label, among those a qualifier ran on."""
    known = qualified[qualified[[f"{f}_known" for f in FLAGS]].sum(axis=1) > 0]
    if known.empty:
        return ('<p class="muted">No qualifier task ran on these mentions (a task with '
                '<code>qualifies:</code> in the task file flags them).</p>')

    def share(n: int, of: int) -> str:
        return f"{n / of:.1%} ({n:,} of {of:,})" if of else "not run"

    return _table(["label", *FLAGS], [
        (r.label, *(share(int(getattr(r, f)), int(getattr(r, f"{f}_known"))) for f in FLAGS))
        for r in known.sort_values("label").itertuples()])


def _codes_html(codes: pd.DataFrame, top: int = 10) -> str:
    """Per label a linker covers: the share of its mentions coded, the codes by score band
    (how far each code is from its mention), and the most frequent codes."""
    if codes.empty:
        return ('<p class="muted">No linker ran (a task file\'s <code>linkers:</code> codes '
                'mentions against a terminology).</p>')
    out = []
    order = [name for name, _ in BANDS] + ["fused"]
    for label, rows in codes.groupby("label", sort=True):
        coded = rows[rows.code.notna()]
        total, n = int(rows.n.sum()), int(coded.n.sum())
        bands = coded.groupby("band").n.sum()
        best = coded.groupby(["code", "code_term"], as_index=False, dropna=False).n.sum()
        best = best.sort_values(["n", "code"], ascending=[False, True]).head(top)
        out.append(f"<div><h3>{html.escape(str(label))}: {n / total:.1%} coded ({n:,} of "
                   f"{total:,})</h3>"
                   + _table(["score of the code", "mentions", "of the coded"],
                            [(band, int(bands[band]), f"{bands[band] / n:.1%}")
                             for band in order if band in bands])
                   + _table(["code", "the code's term", "mentions coded"],
                            [(r.code, r.code_term, int(r.n)) for r in best.itertuples()])
                   + "</div>")
    return f'<div class="texts">{"".join(out)}</div>'


def _not_annotated_html(run: RunOutputs, examples: int = 3) -> str:
    """Documents skipped or failed, by reason (a few of their ids each), and the mentions of
    failed documents left out of every figure."""
    docs = run.documents[run.documents.status != "annotated"]
    if docs.empty:
        return '<p class="muted">Every document was annotated.</p>'
    rows = [(status, reason, ", ".join(sorted(group.doc_id.astype(str))[:examples]), len(group))
            for (status, reason), group in docs.fillna({"reason": "?"}).groupby(
                ["status", "reason"], sort=True)]
    rows.sort(key=lambda r: (r[0] != "failed", -r[3], r[1]))
    note = (f'<p class="muted">{run.left_out:,} mentions found in documents that then failed '
            "are left out of this report's counts, plots and tables; the evaluation scores "
            "every span the run wrote, as <code>pipeline.evaluate</code> does.</p>"
            if run.left_out else "")
    return _table(["state", "reason", "for example", "documents"], rows, numeric_from=3) + note


def _demonstration_html(record: dict[str, Any]) -> str:
    """A warning where a task of the last run marks its model as a demonstration one."""
    tasks = sorted(name for name, t in record.get("config", {}).get("tasks", {}).items()
                   if t.get("demonstration"))
    if not tasks:
        return ""
    return ('<div class="warn"><b>Made with a demonstration model</b> (task '
            f'{html.escape(", ".join(tasks))}): its mentions show the pipeline at work, they '
            "are not clinical annotations. Annotate real notes with the DT4H models "
            "(<code>tasks/dt4h.yaml</code>).</div>")


def _thresholds_html(record: dict[str, Any]) -> str:
    """The least similarity each linker of the last run coded with."""
    linkers = record.get("config", {}).get("linkers", {})
    said = [f"{html.escape(name)}: " + ", ".join(
        f"{html.escape(method)} {'none (ranks, not similarities)' if low is None else f'{low:g}'}"
        for method, low in spec["min_score"].items())
        for name, spec in sorted(linkers.items()) if isinstance(spec.get("min_score"), dict)]
    return (f'<p class="muted">Least similarity that codes (a task file\'s '
            f'<code>min_score:</code>): {"; ".join(said)}.</p>' if said else "")


def _tiles(run: RunOutputs) -> str:
    docs, record = run.documents, run.record
    states = docs.status.value_counts()
    throughput = record.get("throughput", {})
    tiles = [("documents", f"{len(docs):,}"),
             *((s, f"{int(states.get(s, 0)):,}") for s in ("annotated", "skipped", "failed")),
             ("mentions in annotated documents", f"{int(run.mentions.n.sum()):,}"),
             ("languages", f"{docs.lang.nunique():,}")]
    if record:
        counts, seconds = record.get("counts", {}), record.get("seconds") or 0
        real = sum(v for k, v in counts.items() if k.startswith("tokens/real_"))
        padding = sum(v for k, v in counts.items() if k.startswith("tokens/padding_"))
        tiles += [("last run: documents read", f"{throughput.get('documents', 0):,}"),
                  ("last run: wall time", f"{seconds:,.0f} s"),
                  ("last run: documents/s", f"{throughput.get('documents_per_s') or 0:,.2f}"),
                  ("last run: model tokens/s", f"{real / seconds if seconds else 0:,.0f}"),
                  ("last run: padding", f"{padding / max(real + padding, 1):.1%}")]
    return "".join(f'<div class="tile"><div class="v">{html.escape(v)}</div>'
                   f'<div class="k">{html.escape(k)}</div></div>' for k, v in tiles)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:18px 28px;max-width:1400px}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{background:#fff;border-radius:6px;
padding:10px 16px;min-width:120px;box-shadow:0 1px 2px #0002}.tile .v{font-size:22px;
font-weight:600}.tile .k{color:#666;font-size:12px}.grid{display:grid;gap:14px;
grid-template-columns:repeat(auto-fit,minmax(560px,1fr))}section,.card{background:#fff;
border-radius:6px;padding:12px 16px;margin-top:14px;box-shadow:0 1px 2px #0002}
.card svg{width:100%;height:auto}h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;
font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
.num{text-align:right;font-variant-numeric:tabular-nums}.texts{display:flex;flex-wrap:wrap;
gap:24px}.muted{color:#777}details summary{cursor:pointer}.warn{background:#fff4d6;
border-left:4px solid #d08c00;padding:10px 16px;margin-bottom:14px;border-radius:4px}
"""


def render(run: RunOutputs, gold: dict[str, Any] | None) -> str:
    """The report page (mention texts only if ``run`` has them)."""
    record = run.record
    plots = "".join(f'<div class="card">{svg}</div>' for svg in figures(run).values())
    if run.texts is not None:
        texts = "".join(
            f"<div><h3>{html.escape(label)}</h3>{_table(['text', 'mentions'], t.values)}</div>"
            for label, t in top_texts(run.texts).items()) or '<p class="muted">no mentions</p>'
    else:
        texts = '<p class="muted">Mention texts are hidden in this report (--hide_texts).</p>'
    evaluation_html = (_evaluation_html(gold) if gold else
                       '<p class="muted">No gold given (python -m pipeline.report OUT --gold '
                       'GOLD.tsv).</p>')
    tasks = record.get("config", {}).get("tasks", {})
    models = _table(["task", "kind", "languages", "model", "fingerprint"], [
        (name, t.get("kind"), ", ".join(t.get("languages", [])), t["model"].get("location"),
         t["model"].get("fingerprint", "")) for name, t in tasks.items()], numeric_from=99)
    counts = record.get("counts", {})
    counters = _table(["counter", "value"], sorted(counts.items()))
    dists = _table(["distribution", "count", "mean", "min", "max"], [
        (k, d["count"], round(d["mean"], 2), d["min"], d["max"])
        for k, d in sorted(record.get("distributions", {}).items())])
    code = record.get("code_version", {})
    subtitle = (f"run {record.get('run_id', '?')}, {_when(record.get('started'))} to "
                f"{_when(record.get('ended'))}, code {code.get('package')} "
                f"{(code.get('commit') or '')[:10]}") if record else "no run.json"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Clinical NER report: {html.escape(run.out)}</title><style>{_CSS}</style></head>
<body><header><h1>Clinical NER report</h1><p>{html.escape(run.out)} &middot;
{html.escape(subtitle)}</p></header><main>
{_demonstration_html(record)}<div class="tiles">{_tiles(run)}</div>
<div class="grid">{plots}</div>
<section><h2>Documents not annotated, by reason</h2>{_not_annotated_html(run)}</section>
<section><h2>Evaluation (MultiClinAI strict and character F1)</h2>{evaluation_html}</section>
<section><h2>Negated and uncertain mentions per label</h2>{_qualifiers_html(run.qualified)}
</section>
<section><h2>Codes per label</h2>{_codes_html(run.codes)}{_thresholds_html(record)}</section>
<section><h2>Most frequent mention texts per label</h2><div class="texts">{texts}</div></section>
<section><h2>Tasks and models</h2>{models}</section>
<section><details><summary><b>Counters and distributions of the last run</b></summary>
{counters}{dists}</details></section>
</main></body></html>
"""


def write_report(out: str, gold_paths: Sequence[str] = (), show_texts: bool = True) -> str:
    """Write ``OUT/report.html``; returns its URL."""
    run = load_outputs(out, with_texts=show_texts)
    gold = evaluation(run, gold_paths) if gold_paths else None
    url = f"{run.out}/report.html"
    write_atomically(url, render(run, gold).encode("utf-8"))
    return url


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.report",
                                 description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("out", help="A pipeline output directory (local path or fsspec URL).")
    ap.add_argument("--gold", action="append", default=[],
                    help="Gold MultiClinAI TSV to evaluate against (repeatable).")
    ap.add_argument("--hide_texts", action="store_true",
                    help="Leave every mention text out of the report.")
    args = ap.parse_args(argv)
    try:
        print(write_report(args.out, args.gold, show_texts=not args.hide_texts))
    except FileNotFoundError as e:
        raise SystemExit(f"pipeline.report: {e}") from None


if __name__ == "__main__":
    main()
