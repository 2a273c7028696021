"""The CPU backends: the dtype auto picks by timing, OpenVINO's encoder, its cache, its
fall back to torch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TOKENIZER
from tests.fixtures.models import build_hf
from transforms.inference import backends, models
from transforms.inference.models import load_hf

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return build_hf(tmp_path_factory.mktemp("hf"), TOKENIZER, hidden=64)


def windows(n: int = 4):
    rng = np.random.default_rng(3)
    ids = [np.concatenate([[0], rng.integers(5, 250000, int(k)), [2]])
           for k in rng.integers(5, 40, n)]
    return ids, [np.arange(1, len(w) - 1) for w in ids]


@pytest.mark.parametrize("rates, picked", [
    ({"fp32": 271.0, "bf16": 161.0, "fp16": 285.0}, "fp16"),   # AVX-512 BF16 without AMX
    ({"fp32": 300.0, "bf16": 810.0, "fp16": 120.0}, "bf16"),   # AMX
    ({"fp32": 90.0, "bf16": 20.0, "fp16": 10.0}, "fp32"),      # no bf16/fp16 units
])
def test_auto_picks_the_dtype_that_measured_fastest_and_keeps_it_for_the_machine(
        monkeypatch, cache, rates, picked):
    backends.fastest_cpu_dtype.cache_clear()
    monkeypatch.setattr(backends, "matmul_rate", lambda dtype, *a, **k: rates[
        {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]])
    assert backends.fastest_cpu_dtype(768, 3072) == picked
    backends.fastest_cpu_dtype.cache_clear()  # a new process, a later night: not timed again
    monkeypatch.setattr(backends, "matmul_rate", lambda *a, **k: pytest.fail("timed again"))
    assert backends.fastest_cpu_dtype(768, 3072) == picked
    backends.fastest_cpu_dtype.cache_clear()


def test_the_matmul_timing_measures_real_products():
    assert backends.matmul_rate(torch.float32, [(64, 64, 256)], seconds=0.01) > 1e6


@pytest.mark.parametrize("flops_per_s", [1e9, 1e12], ids=["emulated", "native"])
def test_a_dtype_the_cpu_only_emulates_is_timed_in_about_the_time_asked(monkeypatch,
                                                                        flops_per_s):
    """A CPU that runs bf16 at 1 GFLOP/s: one round of a base-size layer over 8,192 tokens is
    116 GFLOP, two minutes; the timing must not take minutes, and still give the rate."""
    from transforms.inference.rates import layer_shapes

    clock = [0.0]
    real = torch.matmul

    def product(a, b):  # a product on a small matrix, as long on the clock as the real one
        clock[0] += 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / flops_per_s
        return real(a[:1], b)

    monkeypatch.setattr(torch, "matmul", product)
    monkeypatch.setattr(backends.time, "perf_counter", lambda: clock[0])
    rate = backends.matmul_rate(torch.bfloat16, layer_shapes(8192), seconds=1.0)
    assert rate == pytest.approx(flops_per_s) and clock[0] < 4.0


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_gives_the_torch_labels_and_converts_once_per_machine(
        hf_dir, cache, precision, monkeypatch):
    want, _ = load_hf(str(hf_dir), CPU).predict(*windows(), [None])
    model = load_hf(str(hf_dir), CPU)
    assert model.use("openvino", precision) == f"openvino {precision}"
    got, probs = model.predict(*windows(), [None])
    agree = (got == want).mean()
    assert agree == 1.0 if precision == "fp32" else agree > 0.9, agree
    assert probs.dtype == np.float32
    converted = []
    real = backends._convert
    monkeypatch.setattr(backends, "_convert", lambda *a: converted.append(a) or real(*a))
    again = load_hf(str(hf_dir), CPU)
    assert again.use("openvino", precision) == f"openvino {precision}"
    assert converted == []                      # the second load read the cached conversion
    assert len(list((cache / "openvino").glob("*/encoder.xml"))) == 1


def test_a_failed_conversion_keeps_torch_with_one_warning(hf_dir, cache, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(backends, "_convert", broken)
    model = load_hf(str(hf_dir), CPU)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        runs_as = model.use("openvino", "int8")
    assert runs_as.startswith("torch ")        # int8 has no torch path: the fastest float
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "openvino: could not convert the encoder (RuntimeError: unsupported operation); "
        "running it with torch"]
    labels, _ = model.predict(*windows(), [None])
    assert len(labels) == sum(len(p) for p in windows()[1])


def test_torch_cannot_run_int8():
    from transforms.inference.models import resolve_dtype

    with pytest.raises(ValueError, match="needs --backend openvino"):
        resolve_dtype("int8", CPU)


def test_a_gpu_keeps_torch_whatever_the_backend(hf_dir, monkeypatch):
    called = []
    monkeypatch.setattr(models, "openvino_encoder", lambda *a: called.append(a))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    model = load_hf(str(hf_dir), CPU)
    model.device = torch.device("cuda")   # as loaded on a GPU worker
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no GPU here
    assert model.use("auto", "auto") == "torch bfloat16"
    assert model.use("openvino", "fp32") == "torch float32"
    assert called == []


def test_openvino_numbers_positions_as_a_bert_type_model_does(tmp_path, cache):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    labels = {0: "O", 1: "B-X", 2: "I-X"}
    config = BertConfig(vocab_size=250002, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, pad_token_id=1,
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    BertForTokenClassification(config).eval().save_pretrained(tmp_path / "bert")
    want, _ = load_hf(str(tmp_path / "bert"), CPU).predict(*windows(), [None])
    model = load_hf(str(tmp_path / "bert"), CPU)
    assert model.use("openvino", "fp32") == "openvino fp32"
    got, _ = model.predict(*windows(), [None])
    assert (got == want).all()


def test_a_shared_model_cache_converts_once_for_every_machine(hf_dir, tmp_path, monkeypatch):
    want, _ = load_hf(str(hf_dir), CPU).predict(*windows(), [None])
    converted = []
    real = backends._convert
    monkeypatch.setattr(backends, "_convert", lambda *a: converted.append(a) or real(*a))
    shared = str(tmp_path / "shared")  # a bucket or a mounted folder
    for machine in ("a", "b", "c"):  # each a fresh machine: its own empty local cache
        monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / machine))
        model = load_hf(str(hf_dir), CPU)
        assert model.use("openvino", "fp32", shared_cache=shared) == "openvino fp32"
        got, _ = model.predict(*windows(), [None])
        assert (got == want).all()
    assert len(converted) == 1  # machine a converted; b and c copied its conversion
    assert len(list((tmp_path / "shared" / "openvino").glob("*/MANIFEST.json"))) == 1


def _spec(layout: str, tmp_path, seed: int = 0):
    """A task of each model layout, its files written under ``tmp_path``."""
    from tests.fixtures.models import build_mtl
    from transforms.core.spec import TaskSpec

    if layout == "hf":
        model = str(build_hf(tmp_path / "hf", TOKENIZER, seed=seed, hidden=64))
        encoder, heads = None, (None,)
    else:
        suffix, legacy = layout.split("-")[-1], "legacy" in layout
        model = str(build_mtl(tmp_path / f"m.{suffix}", tmp_path / "enc", TOKENIZER,
                              legacy_keys=legacy, prefix="model." if legacy else "", seed=seed))
        encoder, heads = str(tmp_path / "enc"), ("symptom_es_ner", "symptom_it_ner")
    return TaskSpec(name="t", kind=layout.split("-")[0], model=model, encoder=encoder,
                    languages=("es",), tokenizer=str(TOKENIZER), heads={"es": heads})


@pytest.mark.parametrize("layout", ["hf", "mtl-pt", "mtl-legacy-safetensors"])
def test_a_cached_conversion_runs_without_building_the_torch_model(
        layout, tmp_path, monkeypatch):
    from transforms.handlers import InferenceConfig, TokenClassifierHandler

    spec = _spec(layout, tmp_path)
    config = InferenceConfig(backend="openvino", precision="fp32",
                             model_cache=str(tmp_path / "shared"))
    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "a"))
    first = TokenClassifierHandler(spec, config).load_model()  # builds it, converts, publishes
    heads = list(spec.all_heads)
    want = first.predict(*windows(), heads)

    def built(*args, **kwargs):
        raise AssertionError("a torch model was built")

    monkeypatch.setattr(models, "load_hf", built)
    monkeypatch.setattr(models, "load_mtl", built)
    for machine in ("b", "b"):  # a fresh machine (copied from the shared cache), then again
        monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / machine))
        model = TokenClassifierHandler(spec, config).load_model()
        assert model.runs_as == "openvino fp32"
        got = model.predict(*windows(), heads)
        assert (got[0] == want[0]).all() and (got[1] == want[1]).all()


@pytest.mark.parametrize("layout", ["hf", "mtl-pt"])
def test_a_model_rewritten_in_place_is_converted_again(layout, tmp_path, cache, monkeypatch):
    from transforms.handlers import InferenceConfig, TokenClassifierHandler

    spec = _spec(layout, tmp_path)
    config = InferenceConfig(backend="openvino", precision="fp32")
    TokenClassifierHandler(spec, config).load_model()
    new = Path(_spec(layout, tmp_path / "new", seed=5).model)  # other weights, same shapes
    for f in new.iterdir() if new.is_dir() else [new]:  # written over the old files
        (Path(spec.model) / f.name if new.is_dir() else Path(spec.model)).write_bytes(
            f.read_bytes())
    heads = list(spec.all_heads)
    torch_model = (load_hf(spec.model, CPU) if spec.kind == "hf" else
                   models.load_mtl(spec.model, spec.encoder, heads, CPU))
    want, _ = torch_model.predict(*windows(), heads)
    converted = []
    real = backends._convert
    monkeypatch.setattr(backends, "_convert", lambda *a: converted.append(a) or real(*a))
    got, _ = TokenClassifierHandler(spec, config).load_model().predict(*windows(), heads)
    assert len(converted) == 1 and (got == want).all()


@pytest.mark.parametrize("when", ["while the torch model is read",
                                  "after its files were hashed, before its cached conversion "
                                  "runs"])
def test_a_model_replaced_while_it_is_read_never_runs_with_another_versions_encoder(
        when, tmp_path, cache, monkeypatch):
    import os
    import shutil

    from transformers import AutoModelForTokenClassification

    from transforms.handlers import InferenceConfig, TokenClassifierHandler

    spec = _spec("hf", tmp_path)
    new = build_hf(tmp_path / "new", TOKENIZER, seed=5, hidden=64)
    config = InferenceConfig(backend="openvino", precision="fp32")

    def replace() -> None:  # a new version moved into place, as a deployment does
        shutil.copy(new / "model.safetensors", tmp_path / "next")
        os.replace(tmp_path / "next", Path(spec.model) / "model.safetensors")

    if when.startswith("while"):
        real = AutoModelForTokenClassification.from_pretrained
        monkeypatch.setattr(AutoModelForTokenClassification, "from_pretrained",
                            lambda *a, **k: (real(*a, **k), replace())[0])
        TokenClassifierHandler(spec, config).load_model()  # converts the version it read
        monkeypatch.setattr(AutoModelForTokenClassification, "from_pretrained", real)
    else:
        TokenClassifierHandler(spec, config).load_model()  # the old version's conversion
        real = models.hf_files
        monkeypatch.setattr(models, "hf_files", lambda *a: (real(*a), replace())[0])
    got, _ = TokenClassifierHandler(spec, config).load_model().predict(*windows(), [None])
    want, _ = load_hf(spec.model, CPU).predict(*windows(), [None])  # the new version, torch
    assert (got == want).all()


def test_an_mtl_conversion_is_keyed_by_its_checkpoint_and_its_encoders_config_alone(
        tmp_path, cache, monkeypatch):
    from transforms.handlers import InferenceConfig, TokenClassifierHandler

    spec = _spec("mtl-pt", tmp_path)
    config = InferenceConfig(backend="openvino", precision="fp32")
    TokenClassifierHandler(spec, config).load_model()
    # the encoder folder of a downloaded xlm-roberta-base also holds its (unused) weights
    (Path(spec.encoder) / "model.safetensors").write_bytes(b"weights the checkpoint replaces")

    def built(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "load_mtl", built)
    assert TokenClassifierHandler(spec, config).load_model().runs_as == "openvino fp32"


@pytest.mark.parametrize("flags, floats", [("avx512f avx512_vnni amx_bf16 amx_tile", "bf16"),
                                           ("avx512f avx512_bf16 avx512_vnni", "f32")])
def test_an_int8_encoders_float_parts_run_in_bf16_only_with_amx(hf_dir, cache, monkeypatch,
                                                                flags, floats):
    import openvino as ov

    if floats == "bf16" and "BF16" not in ov.Core().get_property("CPU",
                                                                 "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("OpenVINO runs no bf16 on this CPU")
    monkeypatch.setattr(backends, "_cpuinfo", lambda: ["model name\t: a CPU",
                                                       f"flags\t\t: {flags}"])
    converted = load_hf(str(hf_dir), CPU, keyed=True)
    assert converted.use("openvino", "int8") == "openvino int8"
    cached = models.cached_openvino(models.hf_files(str(hf_dir)), "int8", None)  # no torch model
    for model in (converted, cached):
        hint = model.encoder.compiled.get_property("INFERENCE_PRECISION_HINT")
        assert hint == getattr(ov.Type, floats)
        assert model.encoder.float_parts == {"bf16": "bf16", "f32": "fp32"}[floats]
