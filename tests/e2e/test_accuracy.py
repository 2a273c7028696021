"""A trained model's labels land on the right words: the probe model (../shared/models/probe-es,
genuinely trained on 650 SPACCC cases) annotates the 100 held-out cases through the real job,
and the MultiClinAI scorer finds the strict F1 that the model reached when it was measured the
way it was trained."""

import shutil

import pytest

from pipeline.scoring import load_tsv, score
from tests.conftest import REPO, SHARED, SPACCC, run_pipeline

pytestmark = pytest.mark.e2e
PROBE = SHARED / "models" / "probe-es"
# Word-level strict F1 of each head on the held-out cases, from the probe's README.
README_F1 = {"SYMPTOM": 0.1658, "PROCEDURE": 0.2174}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    ids = (PROBE / "heldout.txt").read_text().split()
    assert len(ids) == 100
    for doc_id in ids:
        shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", d / f"{doc_id}.txt")
    return d


@pytest.fixture(scope="module")
def probe_tasks(tmp_path_factory):
    """The quick start's task file, plus the checkpoint's procedure head as a third task."""
    tasks = tmp_path_factory.mktemp("tasks") / "probe.yaml"
    tasks.write_text(
        "tasks:\n"
        f"  symptom:\n    kind: mtl\n    model: {PROBE / 'probe-es.pt'}\n"
        f"    encoder: {PROBE}\n    heads: {{es: symptom_es_ner}}\n"
        f"  procedure:\n    kind: hf\n    model: {PROBE / 'procedure'}\n    languages: [es]\n"
        f"  procedure_mtl:\n    kind: mtl\n    model: {PROBE / 'probe-es.pt'}\n"
        f"    encoder: {PROBE}\n    heads: {{es: procedure_es_ner}}\n")
    return tasks


def strict_f1(out, heldout) -> dict[str, float]:
    ids = {p.stem for p in heldout.glob("*.txt")}
    result = {}
    for task, label in (("symptom", "SYMPTOM"), ("procedure", "PROCEDURE"),
                        ("procedure_mtl", "PROCEDURE")):
        gold = load_tsv(SPACCC / f"gold_{label.lower()}.tsv")
        gold = gold[gold.filename.isin(ids)]
        result[task] = score(gold, load_tsv(out / f"{task}.tsv"))["strict"]["f1"]
    return result


@pytest.fixture(scope="module")
def runs(heldout, probe_tasks, tmp_path_factory):
    f1 = {}
    for name, extra in (("default", []),  # OpenVINO, 8-bit weights, where it is installed
                        ("fp32", ["--backend", "torch", "--precision", "fp32"]),
                        ("bf16", ["--backend", "torch", "--precision", "bf16"]),
                        ("openvino_fp32", ["--backend", "openvino", "--precision", "fp32"])):
        out = tmp_path_factory.mktemp(name)
        run_pipeline("--input", str(heldout), "--output", str(out), "--tasks", str(probe_tasks),
                     "--language", "es", *extra)
        f1[name] = strict_f1(out, heldout)
    return f1


def test_default_run_reaches_the_probes_own_f1(runs):
    got = runs["default"]
    assert got["symptom"] >= README_F1["SYMPTOM"] - 0.01, got
    assert got["procedure"] >= README_F1["PROCEDURE"] - 0.01, got
    assert got["procedure_mtl"] >= README_F1["PROCEDURE"] - 0.01, got


def test_every_backend_and_precision_stays_within_001_of_torch_fp32(runs):
    for name in ("bf16", "openvino_fp32", "default"):
        for task in ("symptom", "procedure", "procedure_mtl"):
            assert abs(runs[name][task] - runs["fp32"][task]) <= 0.01, (name, task, runs)



def test_the_outputs_are_those_of_before_the_archive_scale_rework(tmp_path):
    """The rework changed how documents travel, not what is written: the TSVs, span rows and
    document rows of 20 held-out cases equal what the earlier graph wrote (fp32)."""
    import pandas as pd

    before = REPO / "tests" / "fixtures" / "before"
    old_docs = pd.read_csv(before / "documents.tsv", sep="\t", keep_default_na=False)
    src = tmp_path / "in"
    src.mkdir()
    for doc_id in old_docs.doc_id:
        shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", src / f"{doc_id}.txt")
    out = tmp_path / "out"
    run_pipeline("--input", str(src), "--output", str(out), "--tasks",
                 str(REPO / "tasks" / "probe-es.yaml"), "--language", "es", "--precision", "fp32")
    for task in ("symptom", "procedure"):
        new = pd.read_csv(out / f"{task}.tsv", sep="\t", keep_default_na=False)
        old = pd.read_csv(before / f"{task}.tsv", sep="\t", keep_default_na=False)
        assert len(new) > 100
        assert sorted(new.itertuples(index=False)) == sorted(old.itertuples(index=False))
    key = ["doc_id", "task", "start", "end"]
    new = pd.read_parquet(out / "spans").drop(columns=["source"]).sort_values(key)
    old = pd.read_csv(before / "spans.tsv", sep="\t", keep_default_na=False).sort_values(key)
    columns = ["doc_id", "task", "label", "start", "end", "text", "lang"]
    assert new[columns].values.tolist() == old[columns].values.tolist()
    assert (new.score.to_numpy() - old.score.to_numpy()).__abs__().max() < 1e-4
    docs = pd.read_parquet(out / "documents").drop(columns=["source"]).sort_values("doc_id")
    docs = docs.astype(object).where(docs.notna(), "")
    assert docs.astype(str).values.tolist() == old_docs.astype(str).values.tolist()
