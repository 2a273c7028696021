"""The link stage: a batch of documents' mentions coded where a linker covers their label,
null where none does, never dropped."""

from dataclasses import replace

import numpy as np

from transforms.core.link import Term
from transforms.core.records import Document, Row, Work
from transforms.core.spec import LinkerSpec
from transforms.inference.linking import build_or_load
from transforms.link import LinkHandler, Linkers

TERMS = [Term(code="C1", term="fiebre", system="S"), Term(code="C2", term="cefalea", system="S")]


def mention(doc_id, label, text, start=0):
    return Row(doc_id=doc_id, task="t", label=label, start=start, end=start + len(text),
               text=text, score=0.9, lang="es", source="s")


def test_covered_labels_are_coded_the_others_keep_null_columns(tmp_path):
    spec = LinkerSpec(name="l", labels=("SYMPTOM",), terminology="terms.tsv")
    handler = LinkHandler({"l": spec})
    model = Linkers({("l", None): build_or_load(TERMS, "k", None, cache=tmp_path)})
    docs = [Work(Document("a", "a", "fiebre y cefalea", "s"), mentions=(
                mention("a", "SYMPTOM", "Fiebre"), mention("a", "PROCEDURE", "cefalea", 9))),
            Work(Document("b", "b", "zzzz", "s"), mentions=(mention("b", "SYMPTOM", "zzzz"),)),
            Work(Document("c", "c", "", "s"))]
    a, b, c = handler.run_inference(docs, model)
    (fever, procedure), (unknown,) = a.mentions, b.mentions
    assert (fever["code"], fever["link_method"], fever["link_candidates"]) == (
        "C1", "exact", ["C1"])
    assert procedure["code"] is None and procedure["link_candidates"] is None  # not covered
    assert unknown["code"] is None and unknown["link_candidates"] == []  # covered, not found
    assert fever["text"] == "Fiebre" and c.mentions == ()


def test_turning_ngrams_on_beside_a_model_builds_an_index_with_them(tmp_path, monkeypatch):
    """The index's cache key holds what it holds: a model-only index is not loaded where
    n-grams are wanted beside the model (it has none)."""
    from tests.conftest import TOKENIZER
    from tests.fixtures.models import build_hf

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    build_hf(tmp_path / "encoder", TOKENIZER)
    (tmp_path / "terms.tsv").write_text("C1\tfiebre\nC2\tcefalea\n", encoding="utf-8")
    spec = LinkerSpec(name="l", labels=("SYMPTOM",), terminology=str(tmp_path / "terms.tsv"),
                      models={"*": str(tmp_path / "encoder")}, ngrams=False)
    alone = LinkHandler({"l": spec}, device="cpu").load_model()
    both = LinkHandler({"l": replace(spec, ngrams=True)}, device="cpu").load_model()
    encoder = str(tmp_path / "encoder")
    assert alone[("l", encoder)].ngrams is None and both[("l", encoder)].ngrams is not None


def test_a_bi_encoder_rewritten_in_place_encodes_the_terms_again(tmp_path, monkeypatch):
    """The index's key holds the model's content, not only its location: new weights under
    the same folder never meet the old weights' term vectors."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.conftest import TOKENIZER
    from tests.fixtures.models import build_hf

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    encoder = tmp_path / "encoder"
    build_hf(encoder, TOKENIZER)
    (tmp_path / "terms.tsv").write_text("C1\tfiebre\nC2\tcefalea\n", encoding="utf-8")
    spec = LinkerSpec(name="l", labels=("SYMPTOM",), terminology=str(tmp_path / "terms.tsv"),
                      models={"*": str(encoder)}, ngrams=False)
    before = LinkHandler({"l": spec}, device="cpu").load_model()[("l", str(encoder))]
    weights = load_file(encoder / "model.safetensors")
    save_file({k: torch.flip(v, [0]) * 3 for k, v in weights.items()},
              encoder / "model.safetensors")
    after = LinkHandler({"l": spec}, device="cpu").load_model()[("l", str(encoder))]
    assert not np.allclose(before.vectors, after.vectors)
    assert np.allclose(after.vectors, after.encoder.encode(["fiebre", "cefalea"]), atol=1e-5)
    remote = f"local://{encoder}"  # as gs:// or s3://: the worker's copy is loaded
    copied = LinkHandler({"l": replace(spec, models={"*": remote})}, device="cpu").load_model()
    assert np.allclose(copied[("l", remote)].vectors, after.vectors)


def test_a_terminology_replaced_while_read_never_caches_the_old_terms_under_the_new_key(
        tmp_path, monkeypatch):
    from transforms.io import terminology

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "terms.tsv"
    path.write_text("code\tterm\nT1\ttumor\nT2\tpatrón sinusal\nT3\tfiebre\n", encoding="utf-8")
    spec = LinkerSpec(name="l", labels=("SYMPTOM",), terminology=str(path))
    real, replaced = terminology.read_terms, []

    def read_then_replaced(*args, **kwargs):
        terms = real(*args, **kwargs)
        if not replaced:  # the night's export rewrites the file just after this read
            path.write_text("code\tterm\nN1\ttumor\n", encoding="utf-8")
            replaced.append(1)
        return terms

    monkeypatch.setattr(terminology, "read_terms", read_then_replaced)
    first = LinkHandler({"l": spec}).load_model()[("l", None)]
    second = LinkHandler({"l": spec}).load_model()[("l", None)]  # from the cache
    for linker in (first, second):
        assert [t.code for t in linker.terms] == ["N1"]
        (found,) = linker.link(["tumor"], "es")
        assert [linker.terms[c.term].code for c in found] == ["N1"]
