"""A linker's index: exact forms first, then character n-grams, a dense encoder, or both fused;
built once per terminology and model, then loaded from the cache."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TOKENIZER
from transforms.core.link import Term, normalize
from transforms.inference import linking
from transforms.inference.linking import NgramIndex, build_or_load, index_key

TERMS = [Term(code="C1", term="Dolor abdominal", system="S"),
         Term(code="C1", term="dolor de barriga", system="S", preferred="Dolor abdominal"),
         Term(code="C2", term="Fiebre alta", system="S"),
         Term(code="C3", term="cefalea tensional", system="S")]


def test_exact_forms_first_then_the_nearest_by_character_ngrams(tmp_path):
    linker = build_or_load(TERMS, "k1", None, cache=tmp_path, top=2)
    exact, near, two, nothing, empty = linker.link(["DOLOR de Barriga.", "fiebres altas",
                                                    "dolores altos", "xyzw", ""])
    assert [(TERMS[c.term].code, c.method, c.score) for c in exact] == [("C1", "exact", 1.0)]
    assert TERMS[near[0].term].code == "C2" and near[0].method == "ngram"
    assert 0 < near[0].score < 1
    assert sorted(TERMS[c.term].code for c in two) == ["C1", "C2"]  # one candidate per code
    assert nothing == [] and empty == []
    assert (None, "fiebres altas") in linker.cache  # each distinct string is searched once


def test_min_score_leaves_weak_matches_uncoded(tmp_path):
    linker = build_or_load(TERMS, "k2", None, cache=tmp_path, min_score=0.99)
    assert linker.link(["fiebres altas"]) == [[]]
    # n-grams the terminology never has count against a match: junk never scores 1
    loose = build_or_load(TERMS, "k2", None, cache=tmp_path)
    (junk,), (clean,) = loose.link(["fiebre alta qxzw"]), loose.link(["fiebre altas"])
    assert junk[0].score < 0.9 and junk[0].score < clean[0].score
    assert linker.link(["fiebre alta"])[0][0].method == "exact"  # exact is exact


def test_the_index_is_built_once_then_loaded_from_the_cache(tmp_path, caplog):
    """Built once, then read from the cache: plain arrays and JSON, never a pickle."""
    caplog.set_level(logging.INFO, "pipeline")
    build_or_load(TERMS, "k3", None, cache=tmp_path)
    again = build_or_load(TERMS, "k3", None, cache=tmp_path)
    assert [r.message.split(": ")[1].split(" ")[0] for r in caplog.records] == [
        "built", "converted", "cached"]
    assert again.link(["fiebre altaa"])[0][0].method == "ngram"
    assert sorted(p.name for p in (tmp_path / "linking" / "k3").iterdir()) == [
        "MANIFEST.json", "idf.npy", "ngrams.json", "ngrams.npz"]
    assert index_key("t.tsv", None, "abc") != index_key("t.tsv", "model", "abc")
    assert index_key("t.tsv", None, "abc") != index_key("t.tsv", None, "abd")
    assert index_key("t.tsv", "m", "abc", ngrams=False) != index_key("t.tsv", "m", "abc")


def test_ngram_scores_are_tfidf_cosines_scaled_by_the_known_share(tmp_path):
    """A loaded index scores as scikit-learn's TF-IDF cosine when the terminology has every
    n-gram of a form, lower by the unseen n-grams' share of the weight otherwise; it searches
    without importing scikit-learn (a second of every worker's start)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    forms = [normalize(t.term) for t in TERMS]
    fitted = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True)
    cosines = fitted.fit(forms).transform(["fiebre abdominal fiebre"]) @ fitted.transform(forms).T
    build_or_load(TERMS, "t1", None, cache=tmp_path)
    code = ("import sys; from pathlib import Path; from transforms.inference.linking import "
            f"NgramIndex; index = NgramIndex(folder=Path({str(tmp_path / 'linking' / 't1')!r})); "
            "found = index.search(['fiebre abdominal fiebre', 'fiebre abdominal fiebre qxzw'], 4); "
            "print([[(c.term, c.score) for c in f] for f in found], 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.rsplit(" ", 1)
    clean, junk = eval(out[0])
    assert out[1].strip() == "False"
    expected = {t: c for t, c in enumerate(cosines.toarray()[0]) if c}
    assert dict(clean) == pytest.approx(expected, abs=1e-6)
    assert [t for t, _ in junk] == [t for t, _ in clean]
    assert all(0 < j < c for (_, j), (_, c) in zip(junk, clean))


def test_term_vectors_are_scikit_learns_tfidf_on_real_strings(monkeypatch):
    """The same weights as scikit-learn's; n-grams of more than ``MAX_DF`` terms are not
    searched by (their rows empty), the others untouched."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tests.transforms.core.test_link import gold_forms

    forms = sorted({normalize(f) for f in gold_forms()} - {""})
    index = NgramIndex(forms)
    fitted = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True)
    expected = fitted.fit_transform(forms).T.tocsr()
    order = [fitted.vocabulary_[g] for g in sorted(index.vocabulary, key=index.vocabulary.get)]
    assert len(forms) > 1000 and sorted(order) == list(range(len(order)))
    assert abs(index.matrix - expected[order]).max() < 1e-6
    monkeypatch.setattr(linking, "MAX_DF", 100)
    pruned, common = NgramIndex(forms).matrix, np.diff(expected[order].indptr) > 100
    assert common.sum() > 10 and not np.diff(pruned.indptr)[common].any()
    assert abs(pruned[~common] - expected[order][~common]).max() < 1e-6


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random-weight XLM-R: the dense path's mechanics, not its accuracy."""
    from tests.fixtures.models import build_hf

    folder = tmp_path_factory.mktemp("encoder")
    build_hf(folder, TOKENIZER)
    return str(folder)


def test_a_dense_encoder_ranks_alone_or_fused_with_the_ngrams(tmp_path, encoder):
    dense = build_or_load(TERMS, "d1", encoder, cache=tmp_path, ngrams=False, top=3)
    (found,) = dense.link(["dolor abdominal intenso"])
    assert [c.method for c in found] == ["dense"] * 3
    assert sorted(TERMS[c.term].code for c in found) == ["C1", "C2", "C3"]
    assert dense.vectors.shape == (len(TERMS), 32)
    fused = build_or_load(TERMS, "d2", encoder, cache=tmp_path, top=3)
    (found,) = fused.link(["dolor abdominal intenso"])
    assert {c.method for c in found} == {"fused"}
    assert fused.link(["fiebre alta"])[0][0].method == "exact"
    cached = build_or_load(TERMS, "d2", encoder, cache=tmp_path, top=3)
    assert (cached.vectors == fused.vectors).all()


def test_one_machine_builds_the_index_the_others_read_it_from_the_shared_cache(tmp_path, caplog):
    caplog.set_level(logging.INFO, "pipeline")
    shared = str(tmp_path / "bucket")
    build_or_load(TERMS, "s1", None, cache=tmp_path / "machine-1", shared=shared)
    other = build_or_load(TERMS, "s1", None, cache=tmp_path / "machine-2", shared=shared)
    hows = [r.message.split(": ")[1].split(" ")[0] for r in caplog.records]
    assert hows == ["built", "converted", "downloaded"]
    assert other.link(["fiebre alta"])[0][0].method == "exact"


def test_a_term_with_a_language_codes_mentions_of_that_language_only(tmp_path):
    terms = [Term(code="C1", term="fever", system="S", language="en"),
             Term(code="C1", term="fiebre", system="S", language="es"),
             Term(code="C2", term="fiebre", system="S", language="it"),
             Term(code="C3", term="febbre alta", system="S")]
    linker = build_or_load(terms, "l1", None, cache=tmp_path)
    (es,), (it,), (anyone,) = (linker.link(["Fiebre"], lang) for lang in ("es", "it", None))
    assert [terms[c.term].code for c in es] == ["C1"]
    assert [terms[c.term].code for c in it] == ["C2"]
    assert sorted(terms[c.term].code for c in anyone) == ["C1", "C2"]
    (near,) = linker.link(["fever alta"], "it")  # the English term is nearest, not Italian
    assert near and "C1" not in {terms[c.term].code for c in near}


def test_terms_of_other_languages_never_crowd_out_the_mentions_own(tmp_path, encoder):
    """Languages are kept apart before the nearest terms are picked, not after: 45 English
    terms nearer than the one Spanish term leave it first for a Spanish mention."""
    terms = [Term(code=f"E{i}", term=f"dolor abdominal tipo {i}", system="S", language="en")
             for i in range(45)] + [Term(code="S1", term="dolor abdominal agudo", system="S",
                                         language="es")]
    for key, model, ngrams in (("m1", None, True), ("m2", encoder, False)):
        linker = build_or_load(terms, key, model, cache=tmp_path, ngrams=ngrams, top=3)
        (found,) = linker.link(["dolor abdominal"], "es")
        assert [terms[c.term].code for c in found] == ["S1"]
        assert {terms[c.term].language for c in linker.link(["dolor abdominal"], "en")[0]} == {
            "en"}
