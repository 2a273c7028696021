import numpy as np
import pytest
import torch

from tests.conftest import TOKENIZER
from tests.fixtures.models import build_hf, build_mtl
from transforms.inference.models import (ModelLoadError, load_hf, load_mtl, load_state_dict,
                                         mtl_heads, pad, resolve_dtype)

CPU = torch.device("cpu")
HEADS = ["symptom_es_ner", "symptom_it_ner", "symptom_ro_ner"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("enc")


@pytest.mark.parametrize("name,legacy,prefix", [
    ("modern.pt", False, ""), ("legacy.pt", True, ""), ("prefixed.pt", True, "model."),
    ("modern.safetensors", False, "model."),
])
def test_both_head_layouts_and_the_model_prefix(tmp_path, encoder_dir, name, legacy, prefix):
    path = build_mtl(tmp_path / name, encoder_dir, TOKENIZER, legacy_keys=legacy, prefix=prefix)
    heads = mtl_heads(load_state_dict(str(path)))
    assert sorted(heads) == HEADS
    assert all(w.shape == (3, 32) and b.shape == (3,) for w, b in heads.values())
    model = load_mtl(str(path), str(encoder_dir), HEADS, CPU)
    assert set(model.heads) == set(HEADS)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"encoder.x": torch.zeros(1), "obj": Evil()}, path)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_state_dict(str(path))


def test_corrupted_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupted"):
        load_state_dict(str(bad))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_state_dict(str(tmp_path / "nope.pt"))


def windows(rng, n_windows):
    """Random windows (ids with special tokens) and the positions each predicts."""
    ids, pos = [], []
    for _ in range(n_windows):
        n = int(rng.integers(5, 40))
        ids.append(np.concatenate([[0], rng.integers(5, 250000, n), [2]]).astype(np.int32))
        pos.append(np.sort(rng.choice(np.arange(1, n + 1), size=n // 2, replace=False))
                   .astype(np.int32))
    return ids, pos


def test_pad_to_the_longest_or_a_fixed_length():
    ids, mask = pad([np.array([0, 5, 2]), np.array([0, 2])], pad_id=1)
    # to the longest, rounded up to a multiple of 32 (few distinct shapes)
    assert ids.tolist() == [[0, 5, 2] + [1] * 29, [0, 2] + [1] * 30]
    assert mask.tolist() == [[1] * 3 + [0] * 29, [1] * 2 + [0] * 30]
    assert pad([np.arange(33)], pad_id=1)[0].shape == (1, 64)
    ids, mask = pad([np.array([0, 2])], pad_id=1, pad_to=4)
    assert ids.tolist() == [[0, 2, 1, 1]] and mask.tolist() == [[1, 1, 0, 0]]


def test_mtl_runs_the_encoder_once_per_batch_and_every_head_asked(tmp_path, encoder_dir):
    path = build_mtl(tmp_path / "m.pt", encoder_dir, TOKENIZER)
    model = load_mtl(str(path), str(encoder_dir), HEADS, CPU)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    ids, pos = windows(np.random.default_rng(0), 4)
    heads = ["symptom_it_ner", "symptom_es_ner"]
    labels, probs = model.predict(ids, pos, heads)
    assert len(calls) == 1
    assert labels.shape == probs.shape == (sum(len(p) for p in pos), 2)
    assert labels.dtype == np.int16 and probs.dtype == np.float32
    offset = 0
    for w, p in zip(ids, pos):  # same as each window alone through each head
        with torch.no_grad():
            h = model.encoder(input_ids=torch.tensor(w[None]).long())[0][0]
            expect_all = [torch.softmax(model.heads[head](h[p]), -1) for head in heads]
        for k, expect in enumerate(expect_all):
            np.testing.assert_array_equal(labels[offset:offset + len(p), k],
                                          expect.argmax(-1).numpy())
            np.testing.assert_allclose(probs[offset:offset + len(p), k],
                                       expect.max(-1).values.numpy(), atol=1e-5)
        offset += len(p)


def test_a_groups_batches_in_one_call_each_as_alone_and_a_failing_one_apart(tmp_path):
    d = build_hf(tmp_path / "stl", TOKENIZER)
    model = load_hf(str(d), CPU)
    rng = np.random.default_rng(2)
    first, second = windows(rng, 3), windows(rng, 2)
    vocab = model.encoder.config.vocab_size
    bad = ([np.array([0, vocab + 7, 2])], [np.array([1])])  # an id beyond the vocabulary
    got = model.predict_many([(*first, [None]), (*bad, [None]), (*second, [None])])
    assert isinstance(got[1], IndexError) and got[1].__traceback__ is None
    for result, batch in ((got[0], first), (got[2], second)):
        want = model.predict(*batch, [None])
        np.testing.assert_array_equal(result[0], want[0])
        np.testing.assert_array_equal(result[1], want[1])
    with pytest.raises(IndexError):
        model.predict(*bad, [None])


def test_hf_predictions_match_the_transformers_model(tmp_path):
    from transformers import AutoModelForTokenClassification

    d = build_hf(tmp_path / "stl", TOKENIZER)
    model = load_hf(str(d), CPU)
    ref = AutoModelForTokenClassification.from_pretrained(d).eval()
    ids, pos = windows(np.random.default_rng(1), 3)
    labels, _ = model.predict(ids, pos, [None])
    offset = 0
    for w, p in zip(ids, pos):
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor(w[None]).long()).logits[0]
        np.testing.assert_array_equal(labels[offset:offset + len(p), 0],
                                      logits[p].argmax(-1).numpy())
        offset += len(p)


def test_precision_names():
    assert resolve_dtype("fp16", CPU) == torch.float16
    assert resolve_dtype("fp32", CPU) == torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("int4", CPU)


def test_a_gpu_asked_for_and_missing_is_a_clear_error_not_a_cpu_run(monkeypatch):
    from transforms.inference.models import AcceleratorMissing, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    with pytest.raises(AcceleratorMissing, match="no usable CUDA device"):
        pick_device("cuda")


def test_weights_reach_the_device_already_in_their_compute_dtype(tmp_path, monkeypatch):
    meta = torch.device("meta")  # stands for a GPU: moving there keeps dtypes, holds no data
    model = load_hf(str(build_hf(tmp_path / "hf", TOKENIZER)), meta)
    assert {(p.device.type, p.dtype) for p in model.encoder.parameters()} == {
        ("cpu", torch.float32)}  # nothing on the device before the dtype is known
    moved = []
    to = torch.Tensor.to

    def record(tensor, *args, **kwargs):
        out = to(tensor, *args, **kwargs)
        if out.device.type == "meta" and tensor.is_floating_point():
            moved.append(tensor.dtype)
        return out

    monkeypatch.setattr(torch.Tensor, "to", record)
    assert model.use("torch", "bf16") == "torch bfloat16"
    assert moved and set(moved) == {torch.bfloat16}
    assert {(p.device.type, p.dtype) for p in model.encoder.parameters()} == {
        ("meta", torch.bfloat16)}


def test_a_head_stored_under_both_layouts_is_refused(tmp_path, encoder_dir):
    from transforms.inference.models import ModelLoadError, load_mtl, mtl_files

    path = build_mtl(tmp_path / "m.pt", encoder_dir, TOKENIZER, legacy_keys=True)
    sd = torch.load(path, weights_only=True)
    sd["classifiers.symptom_es_ner.weight"] = sd["symptom_es_classifier.weight"] + 1
    sd["classifiers.symptom_es_ner.bias"] = sd["symptom_es_classifier.bias"]
    torch.save(sd, path)
    for load in (lambda: load_mtl(str(path), str(encoder_dir), ["symptom_es_ner"], CPU),
                 lambda: mtl_files(str(path), str(encoder_dir), ["symptom_es_ner"])):
        with pytest.raises(ModelLoadError, match="'symptom_es_ner' is stored twice"):
            load()
