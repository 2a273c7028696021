import numpy as np
import pytest
import torch

from pipeline.smoke_models import build_hf, build_mtl
from tests.conftest import TOKENIZER
from transforms.handlers import pad_batch
from transforms.models import ModelLoadError, load_hf, load_mtl, load_state_dict, mtl_heads
from transforms.records import Window

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
    model = load_mtl(str(path), str(encoder_dir), HEADS, CPU, None)
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


def windows(rng, heads):
    out = []
    for i, head in enumerate(heads):
        n = int(rng.integers(5, 40))
        ids = np.concatenate([[0], rng.integers(5, 250000, n), [2]]).astype(np.int32)
        pos = np.sort(rng.choice(np.arange(1, n + 1), size=n // 2, replace=False)).astype(np.int32)
        out.append(Window("k", "t", head, i, ids, pos, pos.astype(np.int64), pos + 1))
    return out


def test_mtl_runs_the_encoder_once_per_batch_and_each_row_through_its_head(tmp_path, encoder_dir):
    path = build_mtl(tmp_path / "m.pt", encoder_dir, TOKENIZER)
    model = load_mtl(str(path), str(encoder_dir), HEADS, CPU, None)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = windows(np.random.default_rng(0), ["symptom_it_ner", "symptom_es_ner",
                                               "symptom_ro_ner", "symptom_es_ner"])
    ids, mask = pad_batch(batch, model.pad_id)
    got = list(model.predict(ids, mask, [w.positions for w in batch], [w.head for w in batch]))
    assert len(calls) == 1
    for w, (labels, probs) in zip(batch, got):  # same as each window alone through its head
        with torch.no_grad():
            h = model.encoder(input_ids=torch.tensor(w.input_ids[None]).long())[0][0]
            p = torch.softmax(model.heads[w.head](h[w.positions]), -1)
        np.testing.assert_array_equal(labels, p.argmax(-1).numpy())
        np.testing.assert_allclose(probs, p.max(-1).values.numpy(), atol=1e-5)


def test_hf_predictions_match_the_transformers_model(tmp_path):
    from transformers import AutoModelForTokenClassification

    d = build_hf(tmp_path / "stl", TOKENIZER)
    model = load_hf(str(d), CPU, None)
    ref = AutoModelForTokenClassification.from_pretrained(d).eval()
    batch = windows(np.random.default_rng(1), [None] * 3)
    ids, mask = pad_batch(batch, model.pad_id)
    got = list(model.predict(ids, mask, [w.positions for w in batch], [None] * 3))
    for w, (labels, _) in zip(batch, got):
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor(w.input_ids[None]).long()).logits[0]
        np.testing.assert_array_equal(labels, logits[w.positions].argmax(-1).numpy())
