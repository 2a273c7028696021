"""The run report: what it shows, what it hides, and that a real browser renders it."""

import html
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from pipeline.scoring import load_tsv
from pipeline.report import write_report
from tests.conftest import SPACCC

pytestmark = pytest.mark.e2e

GOLD = [str(SPACCC / "gold_symptom.tsv"), str(SPACCC / "gold_procedure.tsv")]


@pytest.fixture(scope="module")
def report(annotated):
    out, _ = annotated
    write_report(str(out), GOLD)
    return out, (out / "report.html").read_text(encoding="utf-8")


def test_report_shows_the_run(report, spaccc_sample):
    out, page = report
    assert page.count("<svg") == 4  # mentions, documents, length, spans per document
    for title in ("Mentions per label and language", "Documents per language and state",
                  "Document length", "Spans per annotated document",
                  "Most frequent mention texts per label", "Evaluation"):
        assert title in page
    n_docs = len(list(spaccc_sample.glob("*.txt")))
    assert f'<div class="v">{n_docs}</div><div class="k">documents</div>' in page
    # self-contained: nothing to fetch, nothing to run
    assert "<script" not in page and "<link" not in page and 'src="' not in page
    # the evaluation row is the MultiClinAI score of the run's spans on its own documents
    ids = {p.stem for p in spaccc_sample.glob("*.txt")}
    gold = pd.concat([load_tsv(g) for g in GOLD])
    gold = gold[gold.filename.isin(ids)]
    spans = pd.read_parquet(out / "spans")
    # strict matching counted here directly: distinct predicted mentions equal to a gold one
    predicted = set(zip(spans.doc_id, spans.label, spans.start, spans.end))
    tp = len(predicted & set(zip(gold.filename, gold.label, gold.start_span, gold.end_span)))
    assert f"<td>all</td><td class=\"num\">{tp / len(predicted):.4f}</td>" in page
    assert f"<td class=\"num\">{tp:,}</td>" in page
    top = spans[spans.label == "SYMPTOM"].text.value_counts()
    first = min(top.index[top == top.max()])  # ties: alphabetical
    row = f'<tr><td>{html.escape(first)}</td><td class="num">{top.max():,}</td></tr>'
    assert f"<h3>SYMPTOM</h3><table><thead><tr><th>text</th><th class=\"num\">mentions</th>" \
           f"</tr></thead><tbody>{row}" in page


def test_hide_texts_leaves_every_mention_text_out(annotated, tmp_path):
    out, _ = annotated
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    write_report(str(copy), GOLD, show_texts=False)
    page = (copy / "report.html").read_text(encoding="utf-8")
    texts = set(pd.read_parquet(out / "spans").text)
    words = {t for t in texts if len(t) >= 6 and t.isalpha()}
    assert len(words) > 20
    assert not [t for t in words if t in page]
    assert "hidden in this report" in page


def _browser() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("CLINICAL_NER_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found (apt-get install chromium, or set CHROMIUM)")
        pytest.skip("no Chromium (apt-get install chromium); CI installs it")
    from PIL import Image

    out, _ = report
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", f"--user-data-dir={tmp_path}/p",
         "--window-size=1280,2000", f"--screenshot={shot}", (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1280)
    # matplotlib's first colour (#1f77b4) fills the bars and histograms: the plots are drawn
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 30).sum()
    assert blue > 20_000
    # and the header bar (#1f3b57) is at the top: the page's CSS applied
    assert (np.abs(pixels[20, 640] - [31, 59, 87]).sum()) < 10


def test_evaluate_scores_the_run_as_its_report_does(report):
    import json
    import sys

    from pipeline.report import evaluation, load_outputs
    from tests.conftest import REPO

    out, _ = report
    want = evaluation(load_outputs(str(out)), GOLD)
    proc = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--reference", GOLD[0],
                           "--reference", GOLD[1], "--pred", str(out)], cwd=REPO,
                          capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    assert got["strict"] == want["strict"] and got["char_f1"] == want["char_f1"]
    assert want["strict"]["tp"] > 0 and want["gold_documents_not_in_run"] > 600
    assert f"{want['gold_documents_not_in_run']} gold documents" in proc.stderr


def test_report_of_a_folder_that_is_no_output_says_so(tmp_path):
    from pipeline.report import main

    with pytest.raises(SystemExit, match="no documents/ here"):
        main([str(tmp_path)])


def test_counts_read_as_counts_and_times_to_the_second():
    from pipeline.report import _table, _when

    assert _when("2026-11-27T03:04:07.123456+00:00") == "2026-11-27 03:04:07 UTC"
    assert _when(None) == "?"
    row = _table(["label", "n", "f1"], [["SYMPTOM", 1252126.0, 0.16584]])
    assert ">1,252,126<" in row and ">0.1658<" in row and "1252126.0000" not in row


def test_axes_keep_their_numbers_short_and_few():
    from pipeline.report import _histogram, _short

    assert [_short(x) for x in (0, 1600, 25_000, 150_000, 1_200_000)] == [
        "0", "1,600", "25k", "150k", "1.2M"]
    svg = _histogram(pd.Series([900, 2_000, 3_500, 200_000]), "Document length", "characters")
    ticks = [t for t in ("0", "25k", "50k", "75k", "100k", "125k", "150k", "175k", "200k")
             if f"<!-- {t} -->" in svg]
    assert 2 <= len(ticks) <= 7 and "<!-- 200,000 -->" not in svg


def test_failed_documents_are_named_with_their_reasons_and_their_mentions_left_out(
        annotated, tmp_path):
    import json

    out, _ = annotated
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    spans = pd.read_parquet(copy / "spans")
    failed = sorted(spans.doc_id.unique())[:2]  # one task failed on them, the other's spans kept
    for part in (copy / "documents").glob("*.parquet"):
        docs = pd.read_parquet(part)
        hit = docs.doc_id.isin(failed)
        docs.loc[hit, "status"] = "failed"
        docs.loc[hit, "reason"] = "symptom decode: predictions of another length"
        docs.to_parquet(part, index=False)
    page = open(write_report(str(copy)), encoding="utf-8").read()
    kept = int((~spans.doc_id.isin(failed)).sum())
    assert f'<div class="v">{kept:,}</div><div class="k">mentions in annotated documents' in page
    assert (f"<td>failed</td><td>symptom decode: predictions of another length</td>"
            f"<td>{', '.join(failed)}</td><td class=\"num\">2</td>") in page
    assert f"{len(spans) - kept:,} mentions found in documents that then failed" in page
    # the smoke models have random weights: the report says it was not made by real models
    assert "Made with a demonstration model</b> (task procedure, symptom)" in page
    record = json.loads((copy / "run.json").read_text())
    for task in record["config"]["tasks"].values():
        task.pop("demonstration")
    (copy / "run.json").write_text(json.dumps(record))
    assert "demonstration model" not in open(write_report(str(copy)), encoding="utf-8").read()


def test_a_code_is_in_the_band_of_its_score_as_stored():
    import pyarrow as pa

    from pipeline.report import _bands

    table = pa.table({"link_method": ["exact", "ngram", "ngram", "ngram", "fused", None],
                      "link_score": pa.array([1.0, 0.9, 0.75, 0.1, 0.03, None], pa.float32())})
    assert _bands(table).to_pylist() == ["exact", "0.9 to 1", "0.7 to 0.9", "below 0.5",
                                         "fused", None]  # float32's 0.9 is 0.89999998
