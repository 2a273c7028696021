"""Preparing a machine converts each task's model once: the job's first run reads the cache."""

import logging

from tests.conftest import TOKENIZER
from tests.fixtures.models import build_hf, build_mtl
from transforms.inference import backends


def test_prepare_converts_every_task_once_and_the_job_reads_the_cache(
        tmp_path, monkeypatch, caplog, capsys):
    from pipeline import prepare

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    hf = build_hf(tmp_path / "hf", TOKENIZER, hidden=64)
    mtl = build_mtl(tmp_path / "mtl.pt", tmp_path / "enc", TOKENIZER, langs=("es", "it"))
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        f"tasks:\n  procedure:\n    kind: hf\n    model: {hf}\n    languages: [es]\n"
        f"  symptom:\n    kind: mtl\n    model: {mtl}\n    encoder: {tmp_path / 'enc'}\n"
        "    heads: {es: symptom_es_ner, it: symptom_it_ner}\n")
    monkeypatch.setattr("sys.argv", ["prepare", "--tasks", str(tasks), "--backend", "openvino"])
    prepare.main()
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in printed] == ["task procedure: ready",
                                                          "task symptom: ready"]
    assert all("(openvino int8, " in line for line in printed)
    assert len(list((tmp_path / "cache" / "openvino").glob("*/encoder.xml"))) == 2
    # what a worker of the job then does: load, and find each conversion cached
    converted = []
    real = backends._convert
    monkeypatch.setattr(backends, "_convert", lambda *a: converted.append(a) or real(*a))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert [r[1] for r in prepare.prepare(["--tasks", str(tasks)])] == ["openvino int8"] * 2
    assert converted == []
    assert sum("encoder cached in int8" in r.getMessage() for r in caplog.records) == 2
