"""``python -m pipeline.bench``: each task's model as the job runs it, against this machine's
ceilings, on real documents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import TOKENIZER, read_text, spaccc_files
from tests.fixtures.models import build_hf, build_mtl
from transforms.inference.backends import int8_float_parts


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Task files of two tasks (hf, mtl) of hidden size 64 and of the hf one alone, three real
    SPACCC cases, an empty cache; the ceilings timed on fewer tokens for less time (the same
    code)."""
    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pipeline.bench.CEILING_TOKENS", 1024)
    monkeypatch.setattr("pipeline.bench.CEILING_SECONDS", 0.1)
    hf = build_hf(tmp_path / "hf", TOKENIZER, hidden=64)
    mtl = build_mtl(tmp_path / "mtl.pt", tmp_path / "enc", TOKENIZER, langs=("es",), hidden=64)
    procedure = f"tasks:\n  procedure:\n    kind: hf\n    model: {hf}\n    languages: [es]\n"
    (tmp_path / "procedure.yaml").write_text(procedure)
    (tmp_path / "tasks.yaml").write_text(
        f"{procedure}  symptom:\n    kind: mtl\n    model: {mtl}\n"
        f"    encoder: {tmp_path / 'enc'}\n    heads: {{es: symptom_es_ner}}\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for f in spaccc_files(3):
        shutil.copy(f, docs / f.name)
    return tmp_path, docs


def run(monkeypatch, capsys, *args: str) -> dict:
    from pipeline import bench

    monkeypatch.setattr("sys.argv", ["bench", *args])
    bench.main()
    return json.loads(capsys.readouterr().out)


def real_tokens(docs) -> int:
    """Sub-words of the windows the job cuts from ``docs``, counted apart from the bench."""
    from transforms.segment import load_tokenizer, word_windows

    tokenizer = load_tokenizer(str(TOKENIZER))
    return sum(int(word_windows(read_text(f), tokenizer, 512, 128)
                   .lengths.sum()) for f in sorted(docs.iterdir()))


@pytest.mark.parametrize("below", [float("inf"), 0.0])
def test_a_task_runs_int8_held_against_the_int8_rate_and_is_profiled_below_the_threshold(
        setup, monkeypatch, capsys, below):
    from transforms.inference import rates as rates_module
    from transforms.inference.rates import flops_per_token

    # The threshold is set, not measured: the share itself depends on the machine's load.
    monkeypatch.setattr("pipeline.bench.PROFILE_BELOW", below)
    profiled = []
    real_profile = rates_module.openvino_profile

    def recorded(encoder, ids, mask):
        profiled.append((ids.numel(), real_profile(encoder, ids, mask)))
        return profiled[-1][1]

    monkeypatch.setattr(rates_module, "openvino_profile", recorded)
    folder, docs = setup
    report = run(monkeypatch, capsys, "--tasks", str(folder / "procedure.yaml"),
                 "--input", str(docs), "--language", "es", "--backend", "openvino", "--docs", "3")
    rates = report["matmul_g_per_s"]["hidden 64"]
    assert set(rates) == {"fp32", "bf16", "fp16", "int8"} and min(rates.values()) > 0
    task = report["tasks"]["procedure"]
    assert task["runs_as"] == "openvino int8" and task["documents"] == 3
    assert task["float_parts"] == int8_float_parts()  # this CPU's rule, as the model runs
    assert task["real_tokens"] == real_tokens(docs)  # every window once, none twice
    assert task["ceiling"] == f"int8 {rates['int8']} GOP/s"
    assert task["share_of_ceiling"] == pytest.approx(task["model_gops_per_s"] / rates["int8"],
                                                     rel=0.01, abs=1e-3)
    if below == 0.0:
        assert "profile" not in task and not profiled
        return
    assert {"linear layers", "attention", "layer norm", "quantize/dequantize",
            "vocabulary lookup (torch)"} <= set(task["profile"])
    (tokens, seconds), = profiled  # one batch, its linear layers' rate from its own counters
    linear = tokens * flops_per_token(64, 2, 128, 0) / seconds["linear layers"] / 1e9
    assert task["linear_layers_gops_per_s"] == pytest.approx(linear, rel=0.01)


def test_rates_under_one_unit_keep_three_significant_digits():
    from pipeline.bench import figure

    assert figure(0.000123456) == 0.000123 and figure(0.4) == 0.4 and figure(12.34) == 12.3
    assert figure(2709.4) == 2709 and isinstance(figure(2709.4), int)


def test_each_task_on_torch_is_held_against_its_dtype_and_not_profiled(
        setup, monkeypatch, capsys):
    folder, docs = setup
    monkeypatch.setattr("pipeline.bench.PROFILE_BELOW", float("inf"))  # torch: never profiled
    report = run(monkeypatch, capsys, "--tasks", str(folder / "tasks.yaml"), "--input", str(docs),
                 "--language", "es", "--backend", "torch", "--precision", "fp32", "--docs", "2")
    fp32 = report["matmul_g_per_s"]["hidden 64"]["fp32"]
    assert set(report["tasks"]) == {"procedure", "symptom"}
    for task in report["tasks"].values():
        assert task["runs_as"] == "torch float32" and task["documents"] == 2
        assert task["ceiling"] == f"fp32 {fp32} GFLOP/s" and "profile" not in task


def test_an_input_without_a_readable_document_stops_before_any_model_loads(
        setup, monkeypatch, capsys, tmp_path):
    folder, _ = setup
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.txt").write_bytes(b"\xff\xfe\x00broken")
    with pytest.raises(SystemExit, match="no readable document"):
        run(monkeypatch, capsys, "--tasks", str(folder / "tasks.yaml"), "--input",
            str(tmp_path / "bad"))
    assert not (tmp_path / "cache" / "openvino").exists()


def test_only_documents_in_a_tasks_languages_are_run(setup, monkeypatch, capsys, tmp_path):
    folder, docs = setup
    texts = [read_text(f) for f in sorted(docs.iterdir())]

    def records(*langs: str) -> str:
        path = tmp_path / f"{'-'.join(langs)}.jsonl"
        path.write_text("".join(json.dumps({"id": str(i), "text": t, "lang": lang}) + "\n"
                                for i, (t, lang) in enumerate(zip(texts, langs))))
        return str(path)

    torch_fp32 = ("--tasks", str(folder / "procedure.yaml"), "--backend", "torch",
                  "--precision", "fp32")
    report = run(monkeypatch, capsys, *torch_fp32, "--input", records("es", "en", "es"))
    assert report["tasks"]["procedure"]["documents"] == 2
    with pytest.raises(SystemExit, match="no document of --input in its languages"):
        run(monkeypatch, capsys, *torch_fp32, "--input", records("en", "en", "it"))


@pytest.mark.parametrize("args, said", [
    (["--input", "notes.csv"], "pipeline.bench: "),
    (["--device", "cuda"], "pipeline.bench: a GPU was asked for"),
    (["--max_tokens", "1024"], "do not fit its model"),
])
def test_a_set_up_error_stops_in_one_line_before_any_model_loads(
        setup, monkeypatch, capsys, args, said):
    import torch

    folder, docs = setup
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    given = {"--input": str(docs), **dict(zip(args[::2], args[1::2]))}
    with pytest.raises(SystemExit) as stop:
        run(monkeypatch, capsys, "--tasks", str(folder / "tasks.yaml"),
            *(x for kv in given.items() for x in kv))
    assert said in str(stop.value) and "\n" not in str(stop.value)
    assert not (folder / "cache" / "openvino").exists()


def test_a_batch_that_fails_is_not_counted():
    from pipeline.bench import Counted, Shapes

    from transforms.core.predictor import Predictor

    class Failing(Predictor):
        def predict(self, windows, *args):
            if len(windows) > 1:
                raise RuntimeError("out of memory")
            return np.zeros((8, 1), np.int16), np.ones((8, 1), np.float32)

    counted = Counted(Failing(), Shapes(hidden=64, layers=2, intermediate=128))
    with pytest.raises(RuntimeError):
        counted.predict([np.ones(10, np.int64)] * 2, [np.arange(1, 9)] * 2, [None])
    assert counted.real == counted.padded == 0 and counted.ops == 0
    results = counted.predict_many([([np.ones(10, np.int64)] * 2, [np.arange(1, 9)] * 2, [None]),
                                    ([np.ones(10, np.int64)], [np.arange(1, 9)], [None])])
    assert isinstance(results[0], RuntimeError) and counted.real == 10  # the second batch
