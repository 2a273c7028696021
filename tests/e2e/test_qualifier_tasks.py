"""A qualifier task (negation and uncertainty scopes) flags the mentions of its documents."""

import gzip
import json

import pandas as pd
import pytest

from pipeline.report import load_outputs, render
from tests.conftest import E3C, SHARED, TOKENIZER, read_text, run_pipeline, spaccc_files

PROBE = SHARED / "models" / "probe-es"
SCOPES = {"NSCO": "negated", "USCO": "uncertain"}


@pytest.fixture(scope="module")
def qualified_input(tmp_path_factory):
    """Spanish SPACCC cases and English E3C notes as JSON Lines with their languages, and a
    task file: the probe's symptoms (es) and procedures (es, en), and a random-weight tagger
    with the negation tagger's nine labels qualifying Spanish documents."""
    from tests.fixtures.models import build_hf

    d = tmp_path_factory.mktemp("qualified")
    tagger = build_hf(d / "negation", TOKENIZER, entity=("NEG", "NSCO", "UNC", "USCO"), seed=3)
    records = [{"id": f.stem, "text": read_text(f), "lang": "es"} for f in spaccc_files(8)]
    with gzip.open(E3C / "en.jsonl.gz", "rt", encoding="utf-8") as f:
        records += [{"id": r["id"], "text": r["text"], "lang": "en"}
                    for r in map(json.loads, (next(f) for _ in range(3)))]
    (d / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "tasks.yaml").write_text(
        "tasks:\n"
        f"  symptom:\n    kind: mtl\n    model: {PROBE / 'probe-es.pt'}\n"
        f"    encoder: {PROBE}\n    heads: {{es: symptom_es_ner}}\n"
        f"  procedure:\n    kind: hf\n    model: {PROBE / 'procedure'}\n    languages: [es, en]\n"
        f"  negation:\n    kind: hf\n    model: {tagger}\n    languages: [es]\n"
        f"    qualifies: {json.dumps(SCOPES)}\n")
    return d


def expected_flag(mention, scopes) -> tuple[bool, float | None]:
    """The service's rule, spelled out: starts or ends inside a scope; the best score."""
    held = [s.score for s in scopes.itertuples()
            if s.start <= mention.start < s.end or s.start < mention.end <= s.end]
    return (True, max(held)) if held else (False, None)


@pytest.mark.e2e
@pytest.mark.parametrize("compat", ["false", "true"])
def test_every_mention_is_flagged_by_its_own_documents_scopes(qualified_input, tmp_path,
                                                              compat):
    out = tmp_path / "out"
    run_pipeline("--input", str(qualified_input / "notes.jsonl"), "--output", str(out),
                 "--tasks", str(qualified_input / "tasks.yaml"), f"--reference_compat={compat}")
    spans = pd.read_parquet(out / "spans")
    mentions = spans[spans.task != "negation"]
    scopes = spans[spans.task == "negation"]
    assert set(scopes.label) <= {"NEG", "NSCO", "UNC", "USCO"}
    assert scopes[["negated", "uncertain"]].isna().all().all()  # its own rows: unflagged
    en = mentions.lang == "en"
    assert en.any() and mentions[en][["negated", "negated_score", "uncertain",
                                      "uncertain_score"]].isna().all().all()
    es = mentions[~en]
    got = {flag: 0 for flag in SCOPES.values()}
    for m in es.itertuples():
        for label, flag in SCOPES.items():
            doc_scopes = scopes[(scopes.doc_id == m.doc_id) & (scopes.label == label)]
            value, score = expected_flag(m, doc_scopes)
            assert getattr(m, flag) is value, (m.doc_id, m.start, m.end, flag)
            got_score = getattr(m, f"{flag}_score")
            assert (None if pd.isna(got_score) else got_score) == pytest.approx(score, abs=1e-6)
            got[flag] += value
    assert all(0 < n < len(es) for n in got.values()), got  # both outcomes seen, both flags
    for task in ("symptom", "procedure", "negation"):  # the MultiClinAI TSV is unchanged
        assert pd.read_csv(out / f"{task}.tsv", sep="\t").columns.tolist() == [
            "filename", "label", "start_span", "end_span", "text"]
    report = render(load_outputs(str(out)), None)
    section = report.split("Negated and uncertain mentions per label")[1].split("</section>")[0]
    for label in ("SYMPTOM", "PROCEDURE"):  # shares among the mentions a qualifier ran on
        of_label = es[es.label == label]
        for flag in SCOPES.values():
            n = int(of_label[flag].sum())
            assert f"{n / len(of_label):.1%} ({n:,} of {len(of_label):,})" in section
