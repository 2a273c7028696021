import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.fixtures.scoring import all_pairs_score, as_lists, perturb, synthetic
from pipeline.scoring import EvaluationInputError, breakdown, load_tsv, score
from tests.conftest import REPO, SPACCC
from transforms.outputs.tsv import HEADER as TSV_HEADER, tsv_line


def tsv(rows) -> io.StringIO:
    lines = [TSV_HEADER] + [tsv_line(dict(zip(("doc_id", "label", "start", "end", "text"), r)))
                            for r in rows]
    return io.StringIO("\n".join(lines) + "\n")


GOLD = [("d1", "SYMPTOM", 0, 10, "dolor agud"), ("d1", "SYMPTOM", 20, 30, 'tos "seca"'),
        ("d1", "SYMPTOM", 20, 30, 'tos "seca"'), ("d2", "PROC", 5, 15, "biopsia\tx")]
PRED = [("d1", "SYMPTOM", 0, 10, "dolor agud"), ("d1", "SYMPTOM", 0, 10, "dolor agud"),
        ("d1", "SYMPTOM", 22, 30, 's "seca"'), ("d1", "PROC", 20, 30, "tos"),
        ("d3", "SYMPTOM", 0, 5, '"x" y')]


def test_hand_computed_case():
    got = score(load_tsv(tsv(GOLD)), load_tsv(tsv(PRED)))
    # Strict: the duplicate prediction is dropped; only d1 0-10 matches; the repeated gold
    # mention, the overlap, the wrong label and the document only in predictions all miss.
    assert got["strict"] == {"precision": 0.25, "recall": 0.25, "f1": 0.25, "tp": 1, "fp": 3,
                             "fn": 3}
    # Char: gold best overlaps 1, 16/18, 16/18, 0; predictions 1, 16/18, 0, 0.
    r, p = (1 + 2 * 16 / 18) / 4, (1 + 16 / 18) / 4
    assert got["char_f1"] == {"precision": round(p, 4), "recall": round(r, 4),
                              "f1": round(2 * p * r / (p + r), 4), "n_gold": 4, "n_pred": 4}
    assert got["entity"] is None


def test_entity_filter_and_empty_sides():
    got = score(load_tsv(tsv(GOLD)), load_tsv(tsv(PRED)), "PROC")
    assert got["strict"] == {"precision": 0, "recall": 0, "f1": 0, "tp": 0, "fp": 1, "fn": 1}
    assert got["char_f1"]["f1"] == 0.0
    none = score(load_tsv(tsv(GOLD)), load_tsv(tsv(PRED)), "DISEASE")
    assert none["char_f1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n_gold": 0,
                               "n_pred": 0}


def test_nested_and_overlapping_predictions_take_the_best():
    gold = [("d", "S", 10, 20, "a"), ("d", "S", 0, 100, "b")]
    pred = [("d", "S", 0, 100, "b"), ("d", "S", 12, 20, "c"), ("d", "S", 95, 120, "d")]
    got = score(load_tsv(tsv(gold)), load_tsv(tsv(pred)))
    # by hand: gold 10-20 best matches 12-20 (F1 16/18), gold 0-100 matches 0-100 exactly;
    # predictions: 0-100 -> 1, 12-20 -> 16/18, 95-120 -> 2*5/125 against 0-100
    recall, precision = (16 / 18 + 1) / 2, (1 + 16 / 18 + 10 / 125) / 3
    assert got["char_f1"] == {"precision": round(precision, 4), "recall": round(recall, 4),
                              "f1": round(2 * precision * recall / (precision + recall), 4),
                              "n_gold": 2, "n_pred": 3}
    assert got["strict"] == {"precision": round(1 / 3, 4), "recall": 0.5,
                             "f1": round(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 4), "tp": 1,
                             "fp": 2, "fn": 1}


@pytest.mark.parametrize("body,message", [
    ("filename\tlabel\tstart_span\ttext\nd\tS\t1\tx\n", "missing columns \\['end_span'\\]"),
    ("filename\tlabel\tstart_span\tend_span\ttext\nd\tS\t5\t5\tx\n", "end_span <= start_span"),
    ("filename\tlabel\tstart_span\tend_span\ttext\nd\tS\ta\t5\tx\n", "integers"),
])
def test_invalid_input_is_refused(body, message):
    with pytest.raises(EvaluationInputError, match=message):
        load_tsv(io.StringIO(body))


@pytest.mark.parametrize("name", ["symptom", "procedure"])
def test_real_gold(name):
    gold = load_tsv(SPACCC / f"gold_{name}.tsv")
    perfect = score(gold, gold)
    unique = len(gold.drop_duplicates(["filename", "label", "start_span", "end_span"]))
    # Gold repeats a few mentions; predictions are de-duplicated, so those repeats are misses.
    assert perfect["strict"]["tp"] == unique and perfect["strict"]["precision"] == 1.0
    assert perfect["strict"]["recall"] == round(unique / len(gold), 4)
    assert perfect["char_f1"]["precision"] == 1.0 and perfect["char_f1"]["recall"] == 1.0
    for seed in range(3):
        pred = perturb(gold, seed)
        assert as_lists(score(gold, pred)) == all_pairs_score(gold, pred)
        assert as_lists(score(gold, pred, "OTHER")) == all_pairs_score(gold, pred, "OTHER")


def test_synthetic_agrees_with_all_pairs():
    gold, pred = synthetic(20000, seed=3, docs=300)
    assert as_lists(score(gold, pred)) == all_pairs_score(gold, pred)


def test_breakdowns_by_label_and_language():
    rows = [("MultiClinNER-es-1", "S", 0, 5, "a"), ("MultiClinNER-it-1", "S", 0, 5, "b"),
            ("MultiClinNER-it-1", "P", 7, 9, "c")]
    gold = load_tsv(tsv(rows))
    pred = load_tsv(tsv(rows[:2]))
    by_lang = breakdown(gold, pred, "lang")
    assert by_lang["es"]["strict"]["f1"] == 1.0 and by_lang["it"]["strict"]["fn"] == 1
    by_label = breakdown(gold, pred, "label")
    assert by_label["P"]["strict"]["recall"] == 0 and by_label["S"]["strict"]["f1"] == 1.0


def test_cli_matches_the_official_output_shape(tmp_path):
    (tmp_path / "gold.tsv").write_text(tsv(GOLD).getvalue())
    out = tmp_path / "run"
    out.mkdir()
    (out / "symptom.tsv").write_text(tsv(PRED[:3] + PRED[4:]).getvalue())
    (out / "proc.tsv").write_text(tsv([PRED[3]]).getvalue())
    docs = pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "lang": ["es", "it", "es"]})
    (out / "documents").mkdir()
    docs.to_parquet(out / "documents" / "documents-00000-of-00001.parquet")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.evaluate", *args], cwd=REPO,
                              capture_output=True, text=True)

    plain = json.loads(cli("--reference", str(tmp_path / "gold.tsv"), "--pred", str(out)).stdout)
    # the hand-computed case of test_hand_computed_case, read from a pipeline output folder
    r, p = (1 + 2 * 16 / 18) / 4, (1 + 16 / 18) / 4
    assert plain == {"entity": None,
                     "strict": {"precision": 0.25, "recall": 0.25, "f1": 0.25, "tp": 1,
                                "fp": 3, "fn": 3},
                     "char_f1": {"precision": round(p, 4), "recall": round(r, 4),
                                 "f1": round(2 * p * r / (p + r), 4), "n_gold": 4, "n_pred": 4}}
    assert list(plain) == ["entity", "strict", "char_f1"]
    full = json.loads(cli("--reference", str(tmp_path / "gold.tsv"), "--pred", str(out),
                          "--by", "label", "--by", "lang").stdout)
    assert set(full["by_lang"]) == {"es", "it"} and set(full["by_label"]) == {"SYMPTOM", "PROC"}
    table = cli("--reference", str(tmp_path / "gold.tsv"), "--pred", str(out), "--by", "lang",
                "--table").stdout
    assert "lang=es" in table and "strict P" in table
    bad = cli("--reference", str(tmp_path / "nope.tsv"), "--pred", str(out))
    assert bad.returncode != 0 and "nope.tsv" in bad.stderr


def run_folder(tmp_path, docs=("d1", "d2", "d3")):
    out = tmp_path / "run"
    (out / "documents").mkdir(parents=True)
    (out / "symptom.tsv").write_text(tsv(PRED).getvalue())
    pd.DataFrame({"doc_id": list(docs), "lang": ["es"] * len(docs)}).to_parquet(
        out / "documents" / "documents-0.parquet")
    return out


def evaluate(*args):
    proc = subprocess.run([sys.executable, "-m", "pipeline.evaluate", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_gold_of_documents_the_run_never_saw_is_left_out_and_said(tmp_path):
    run = run_folder(tmp_path)
    unseen = [("d9", "SYMPTOM", 0, 4, "tos"), ("d8", "PROC", 1, 5, "eco")]
    (tmp_path / "a.tsv").write_text(tsv(GOLD[:2]).getvalue())  # two references: both count
    (tmp_path / "b.tsv").write_text(tsv(GOLD[2:] + unseen).getvalue())
    want = score(load_tsv(tsv(GOLD)), load_tsv(tsv(PRED)))
    for pred in (run, run / "symptom.tsv"):  # a folder, or a TSV with documents/ beside it
        got, said = evaluate("--reference", tmp_path / "a.tsv", "--reference",
                             tmp_path / "b.tsv", "--pred", pred)
        assert got == want  # d8, d9 were never run: not missed mentions
        assert "the 3 documents of the run" in said and "2 gold documents (2 mentions) left " \
            "out" in said
    everything, _ = evaluate("--reference", tmp_path / "a.tsv", "--reference",
                             tmp_path / "b.tsv", "--pred", run, "--all_documents")
    assert everything["strict"]["fn"] == want["strict"]["fn"] + 2
    (tmp_path / "list.txt").write_text("d1\n")
    only_d1, said = evaluate("--reference", tmp_path / "b.tsv", "--reference",
                             tmp_path / "a.tsv", "--pred", run, "--doc_list",
                             tmp_path / "list.txt")
    assert only_d1["strict"]["tp"] == 1 and only_d1["strict"]["fn"] == 2
    assert "the 1 documents listed in" in said
    alone = tmp_path / "alone.tsv"  # no manifest: the documents with a predicted mention
    alone.write_text(tsv(PRED).getvalue())
    got, said = evaluate("--reference", tmp_path / "a.tsv", "--reference",
                         tmp_path / "b.tsv", "--pred", alone)
    assert got == score(load_tsv(tsv(GOLD[:3])), load_tsv(tsv(PRED)))  # d2: nothing predicted
    assert "the documents with a predicted mention (pass --documents" in said


def test_linking_accuracy_on_the_mentions_found_and_strict_f1_with_the_code():
    import pandas as pd

    from pipeline.scoring import linking

    cols = ["filename", "label", "start_span", "end_span", "text", "code"]
    gold = pd.DataFrame([("d", "S", 0, 5, "fiebre", "C1"), ("d", "S", 10, 15, "tos", "C2"),
                         ("d", "S", 20, 25, "mareo", "C3"), ("d", "S", 30, 35, "x", "NO_CODE"),
                         ("e", "S", 0, 5, "dolor", "C4")], columns=cols)
    pred = pd.DataFrame([("d", "S", 0, 5, "C1", ["C1", "C9"]),
                         ("d", "S", 10, 15, "C9", ["C9", "C2"]),
                         ("d", "S", 20, 25, None, []), ("d", "S", 40, 45, "C5", ["C5"])],
                        columns=["filename", "label", "start_span", "end_span", "code",
                                 "candidates"])
    result = linking(gold, pred, k=2)
    assert result["found"] == 3  # the gold mentions the prediction found (NO_CODE left out)
    assert result["accuracy@1"] == round(1 / 3, 4) and result["accuracy@2"] == round(2 / 3, 4)
    strict = result["strict_with_code"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (1, 2, 3)  # a coded prediction per fp


def test_an_output_folder_s_codes_files_are_not_predictions_twice(tmp_path):
    from pipeline.scoring import load_codes, load_predictions

    (tmp_path / "symptom.tsv").write_text(f"{TSV_HEADER}\nd\tS\t0\t5\tfiebre\n")
    (tmp_path / "symptom_codes.tsv").write_text(f"{TSV_HEADER}\tcode\nd\tS\t0\t5\tfiebre\tC1\n")
    assert len(load_predictions(tmp_path)) == 1
    codes = load_codes(tmp_path / "symptom_codes.tsv")
    assert codes.code.tolist() == ["C1"] and codes.candidates.tolist() == [["C1"]]


def test_linking_is_scored_on_the_same_documents_and_label_as_the_spans(tmp_path, capsys):
    import json

    from pipeline.evaluate import main

    rows = [("d1", "S", 0, 5, "fever", "C1"), ("d1", "P", 10, 15, "scan", "P1"),
            ("d2", "S", 0, 5, "cough", "C2")]
    for name, extra in (("gold.tsv", ()), ("pred.tsv", ("d2", "S", 20, 25, "extra", "C9"))):
        body = [*rows, *([extra] if extra else [])]
        (tmp_path / name).write_text(f"{TSV_HEADER}\tcode\n" + "".join(
            "\t".join(map(str, r)) + "\n" for r in body))
    (tmp_path / "ids.txt").write_text("d1\n")
    main(["--reference", str(tmp_path / "gold.tsv"), "--pred", str(tmp_path / "pred.tsv"),
          "--doc_list", str(tmp_path / "ids.txt"), "--entity", "S"])
    result = json.loads(capsys.readouterr().out)
    strict = result["linking"]["strict_with_code"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (1, 0, 0)  # d1's S mention only
    assert result["linking"]["found"] == 1


def test_labels_without_gold_are_left_out_and_said(tmp_path):
    run = run_folder(tmp_path)  # predictions of SYMPTOM and PROC
    symptoms = [g for g in GOLD if g[1] == "SYMPTOM"]
    (tmp_path / "gold.tsv").write_text(tsv(symptoms).getvalue())
    got, said = evaluate("--reference", tmp_path / "gold.tsv", "--pred", run)
    no_proc = [p for p in PRED if p[1] != "PROC"]
    assert got == score(load_tsv(tsv(symptoms)), load_tsv(tsv(no_proc)))
    assert "the gold has no PROC mention: those 1 predictions are left out" in said
    scorer, said = evaluate("--reference", tmp_path / "gold.tsv", "--pred", run, "--all_labels")
    assert scorer == score(load_tsv(tsv(symptoms)), load_tsv(tsv(PRED))) and "PROC" not in said


def test_documents_that_failed_in_the_run_are_named(tmp_path):
    run = run_folder(tmp_path)
    docs = pd.read_parquet(run / "documents")
    docs["status"] = ["failed", "annotated", "failed"]
    docs.to_parquet(run / "documents" / "documents-0.parquet")
    (tmp_path / "gold.tsv").write_text(tsv(GOLD).getvalue())
    _, said = evaluate("--reference", tmp_path / "gold.tsv", "--pred", run)
    assert "2 of the 3 scored documents failed in the run, so their gold counts as missed: " \
        "d1, d3" in said


def test_a_tasks_tsv_is_scored_for_linking_with_the_codes_of_its_output(tmp_path):
    run = run_folder(tmp_path)
    (run / "spans").mkdir()
    pd.DataFrame({"doc_id": ["d1", "d1"], "label": ["SYMPTOM", "PROC"], "start": [0, 20],
                  "end": [10, 30], "code": ["C1", "P1"],
                  "link_candidates": [["C1", "C2"], ["P1"]]}).to_parquet(run / "spans" / "s.parquet")
    cols = ("doc_id", "label", "start", "end", "text")
    (tmp_path / "gold.tsv").write_text(f"{TSV_HEADER}\tcode\n" + "".join(
        f"{tsv_line(dict(zip(cols, g)))}\t{c}\n" for g, c in zip(GOLD, ("C1", "C2", "C2", "P9"))))
    (run / "symptom.tsv").write_text(tsv([p for p in PRED if p[1] == "SYMPTOM"]).getvalue())
    got, _ = evaluate("--reference", tmp_path / "gold.tsv", "--pred", run / "symptom.tsv")
    assert got["linking"]["found"] == 1 and got["linking"]["accuracy@1"] == 1.0
    assert got["linking"]["strict_with_code"]["fp"] == 0  # PROC's code is not this TSV's
