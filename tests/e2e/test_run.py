"""End to end: ``python -m pipeline.run`` on real documents, both model kinds, DirectRunner."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import E3C, read_text, run_pipeline
from transforms.core.words import split_words

pytestmark = pytest.mark.e2e


def test_hermetic_local_run(annotated):
    _, proc = annotated
    # No network is reachable (see HERMETIC_ENV): the run went straight to the in-process runner.
    assert "FnApiRunner" in proc.stderr
    assert "PrismRunner" not in proc.stderr and "Falling back" not in proc.stderr
    assert "SMOKE TEST model with RANDOM weights" in proc.stderr


def test_tsv_rows_match_the_text_and_the_words(annotated, spaccc_sample):
    out, _ = annotated
    texts = {p.stem: read_text(p) for p in spaccc_sample.glob("*.txt")}
    for task, label in (("procedure", "PROCEDURE"), ("symptom", "SYMPTOM")):
        official = pd.read_csv(out / f"{task}.tsv", sep="\t")  # as the MultiClinAI scorer reads
        df = pd.read_csv(out / f"{task}.tsv", sep="\t", keep_default_na=False)
        assert list(df.columns) == ["filename", "label", "start_span", "end_span", "text"]
        assert len(official) == len(df) > 100
        assert set(df.filename) == set(texts) and set(df.label) == {label}
        for doc, rows in df.groupby("filename"):
            text = texts[doc]
            s, e = split_words(text)
            starts, ends = set(s.tolist()), set(e.tolist())
            prev_end = -1
            for r in rows.sort_values("start_span").itertuples():
                assert r.text == text[r.start_span:r.end_span]
                assert r.start_span in starts and r.end_span in ends  # word-aligned
                assert r.start_span >= prev_end  # no duplicates, no overlaps
                prev_end = r.end_span


def test_parquet_outputs_agree_with_the_tsv(annotated, spaccc_sample):
    out, _ = annotated
    spans = pd.read_parquet(out / "spans")
    assert {"doc_id", "task", "label", "start", "end", "text", "score", "lang"} <= set(spans)
    assert spans.score.between(0, 1).all() and (spans.lang == "es").all()
    for task in ("procedure", "symptom"):
        tsv = pd.read_csv(out / f"{task}.tsv", sep="\t", keep_default_na=False)
        mine = spans[spans.task == task]
        assert sorted(zip(tsv.filename, tsv.start_span, tsv.end_span, tsv.text)) == sorted(
            zip(mine.doc_id, mine.start, mine.end, mine.text))
    docs = pd.read_parquet(out / "documents")
    texts = {p.stem: read_text(p) for p in spaccc_sample.glob("*.txt")}
    assert sorted(docs.doc_id) == sorted(texts)
    assert (docs.status == "annotated").all()
    assert all(docs.n_chars == [len(texts[d]) for d in docs.doc_id])
    counts = spans.groupby("doc_id").size()
    assert all(docs.n_spans == [counts[d] for d in docs.doc_id])


def test_crlf_text_keeps_offsets(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text = "Paciente con dolor abdominal.\r\nRefiere fiebre\ty tos\u2028desde ayer.\r\n"
    (src / "crlf-note.txt").write_bytes(text.encode("utf-8"))
    run_pipeline("--input", str(src / "*.txt"), "--output", str(tmp_path / "out"),
                 "--tasks", str(smoke_tasks), "--language", "es")
    df = pd.read_csv(tmp_path / "out" / "procedure.tsv", sep="\t", keep_default_na=False)
    assert len(df) > 0
    for r in df.itertuples():
        assert r.filename == "crlf-note" and r.text == text[r.start_span:r.end_span]


def test_jsonl_languages_route_to_the_tasks_that_support_them(smoke_tasks, tmp_path):
    def first(lang, n):
        with gzip.open(E3C / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
            return [json.loads(next(f)) for _ in range(n)]

    records = first("es", 2) + first("en", 2) + first("it", 1)
    records[-1]["lang"] = "fr"
    lines = [json.dumps({"id": r["id"], "text": r["text"], "lang": r["lang"]}) for r in records]
    lines += ['{"id": "empty", "text": "  \\n", "lang": "es"}', "{not json", '{"text": "x"}']
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run_pipeline("--input", str(path), "--output", str(tmp_path / "out"),
                 "--tasks", str(smoke_tasks))
    docs = pd.read_parquet(tmp_path / "out" / "documents").set_index("doc_id")
    assert len(docs) == 8
    es, en, fr = [r["id"] for r in records[:2]], [r["id"] for r in records[2:4]], records[4]["id"]
    assert (docs.loc[es + en, "status"] == "annotated").all()
    assert docs.loc[es[0], "tasks"] == "procedure,symptom" and docs.loc[en[0], "tasks"] == "procedure"
    assert docs.loc[fr, "status"] == "skipped" and "'fr'" in docs.loc[fr, "reason"]
    assert docs.loc["empty", "reason"] == "empty text"
    failed = docs[docs.status == "failed"]
    assert sorted(failed.reason) == ["read: no `id` field", "read: not JSON (Expecting property "
                                     "name enclosed in double quotes at column 2)"]
    sym = pd.read_csv(tmp_path / "out" / "symptom.tsv", sep="\t")
    proc = pd.read_csv(tmp_path / "out" / "procedure.tsv", sep="\t")
    assert set(sym.filename) == set(es) and set(proc.filename) == set(es + en)
    assert np.isin(docs.lang_source[docs.status == "annotated"], ["record"]).all()


def test_mixed_language_shards_are_detected_and_routed(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    expected = {}
    for lang, opener in (("es", open), ("it", open), ("en", gzip.open)):
        with gzip.open(E3C / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
            records = [json.loads(next(f)) for _ in range(4)]
        name = src / (f"{lang}.jsonl.gz" if opener is gzip.open else f"{lang}.jsonl")
        with opener(name, "wt", encoding="utf-8") as out:
            for r in records:  # no language field: it must be detected
                out.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
                expected[r["id"]] = lang
    (src / "MultiClinNER-it-note1.txt").write_text("Paciente con fiebre alta.")  # name says it
    expected["MultiClinNER-it-note1"] = "it"
    run_pipeline("--input", str(src), "--output", str(tmp_path / "out"),
                 "--tasks", str(smoke_tasks))
    docs = pd.read_parquet(tmp_path / "out" / "documents").set_index("doc_id")
    assert docs.lang.to_dict() == expected
    assert docs.loc["MultiClinNER-it-note1", "lang_source"] == "filename"
    detected = docs.drop(index="MultiClinNER-it-note1")
    assert (detected.lang_source == "detected").all() and (detected.lang_score > 0.3).all()
    sym = set(pd.read_csv(tmp_path / "out" / "symptom.tsv", sep="\t").filename)
    proc = set(pd.read_csv(tmp_path / "out" / "procedure.tsv", sep="\t").filename)
    assert sym == {d for d, lang in expected.items() if lang in ("es", "it")}
    assert proc == set(expected)


def test_run_record(annotated, spaccc_sample, smoke_tasks):
    out, proc = annotated
    record = json.loads((out / "run.json").read_text())
    assert record["counts"]["documents/annotated"] == len(list(spaccc_sample.glob("*.txt")))
    assert record["counts"]["documents/task_symptom"] == record["counts"]["documents/read"]
    assert record["options"]["tasks"] == str(smoke_tasks)
    assert set(record["config"]["tasks"]) == {"procedure", "symptom"}
    assert len(record["config"]["tasks"]["symptom"]["model"]["fingerprint"]) == 16
    assert record["started"] < record["ended"] and record["throughput"]["documents_per_s"] > 0
    assert "documents/annotated" in proc.stderr  # the counters table at the end of the run


def test_a_multilabel_task_gives_the_rows_of_one_task_per_head_in_one_encoder_pass(
        spaccc_sample, tmp_path):
    from tests.conftest import TOKENIZER
    from tests.fixtures.models import build_mtl

    heads = ("disease", "symptom", "procedure")
    ckpt = build_mtl(tmp_path / "m" / "multilabel.pt", tmp_path / "m" / "enc", TOKENIZER,
                     heads=heads, seed=4)
    common = f"    kind: mtl\n    model: {ckpt}\n    encoder: {tmp_path / 'm' / 'enc'}\n"
    one = tmp_path / "one.yaml"
    one.write_text(f"tasks:\n  dt4h:\n{common}    heads: {{es: [{', '.join(heads)}]}}\n")
    each = tmp_path / "each.yaml"
    each.write_text("tasks:\n" + "".join(f"  {h}:\n{common}    heads: {{es: {h}}}\n"
                                         for h in heads))
    for name in ("one", "each"):
        run_pipeline("--input", str(spaccc_sample), "--output", str(tmp_path / name),
                     "--tasks", str(tmp_path / f"{name}.yaml"), "--language", "es")

    def rows(path):
        df = pd.read_csv(path, sep="\t", keep_default_na=False)
        return sorted(map(tuple, df.itertuples(index=False)))

    together = rows(tmp_path / "one" / "dt4h.tsv")
    assert together == sorted(r for h in heads for r in rows(tmp_path / "each" / f"{h}.tsv"))
    assert {r[1] for r in together} == {"DISEASE", "SYMPTOM", "PROCEDURE"}
    spans = {(r[0], r[2], r[3], r[1]) for r in together}
    assert any((d, s, e, other) in spans for d, s, e, label in spans for other in
               {"DISEASE", "SYMPTOM", "PROCEDURE"} - {label})   # overlaps across labels kept
    one_counts = json.loads((tmp_path / "one" / "run.json").read_text())["counts"]
    each_counts = json.loads((tmp_path / "each" / "run.json").read_text())["counts"]
    assert one_counts["tokens/real_dt4h"] == each_counts["tokens/real_disease"] > 0
