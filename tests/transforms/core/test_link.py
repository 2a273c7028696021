"""Linking's pure rules: the normalised form, rank fusion, and the null rule."""

from tests.conftest import SPACCC
from transforms.core.link import (LINK_COLUMNS, Candidate, Term, by_code, char_ngrams, fuse,
                                  link_columns, normalize, unlinked)

TERMS = [Term(code="C1", term="Dolor abdominal", system="S"),
         Term(code="C1", term="dolor de barriga", system="S", preferred="Dolor abdominal"),
         Term(code="C2", term="Fiebre", system="S", concept_id=42)]


def test_case_accents_punctuation_and_spacing_do_not_count():
    assert normalize("  Dolor   ABDOMINAL. ") == "dolor abdominal"
    assert normalize("Cefalea-tensional") == normalize("cefalea tensional") == "cefalea tensional"
    assert normalize("Hipertensión") == normalize("hipertension")
    assert normalize("Ñandú") == "ñandu" and normalize("ß") == "ss"
    assert normalize("AÑO") == "año" != normalize("ano")  # ñ is a letter, not an accent
    assert normalize("Ña\u0303o") == "ñao"  # a tilde after another letter is an accent
    assert normalize("TA 120/80 mmHg") == "ta 120 80 mmhg"
    assert normalize("dolor") != normalize("dolores")  # no stemming: a term is a term


def gold_forms() -> list[str]:
    """Every mention string of the SPACCC gold (real clinical Spanish, accented or not)."""
    lines = (SPACCC / "gold_symptom.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return sorted({line.split("\t")[4] for line in lines})


def test_plain_ascii_and_accented_strings_follow_one_rule():
    forms = gold_forms()
    assert sum(not f.isascii() for f in forms) > 100  # both paths, on real mentions
    for form in forms:  # an accented word added: the rest of the form is unchanged
        assert normalize(f"{form} Éxito") == f"{normalize(form)} exito".strip()


def test_character_ngrams_are_scikit_learns_char_wb():
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3)).build_analyzer()
    for form in map(normalize, gold_forms() + ["a", "la tos", "x y"]):
        assert char_ngrams(form) == analyzer(form)


def test_fusion_rewards_agreement_and_one_ranking_passes_through():
    ngram = [Candidate(0, 0.9, "ngram"), Candidate(2, 0.8, "ngram"), Candidate(1, 0.1, "ngram")]
    dense = [Candidate(2, 0.7, "dense"), Candidate(1, 0.6, "dense")]
    fused = fuse([ngram, dense])
    assert [c.term for c in fused] == [2, 1, 0] and {c.method for c in fused} == {"fused"}
    assert fuse([ngram]) == ngram


def test_one_candidate_per_code_its_best_term_first():
    found = by_code([Candidate(1, 0.9, "ngram"), Candidate(0, 0.8, "ngram"),
                     Candidate(2, 0.5, "ngram")], TERMS)
    assert [(TERMS[c.term].code, c.term) for c in found] == [("C1", 1), ("C2", 2)]


def test_a_covered_mention_without_a_code_keeps_its_row_with_empty_candidates():
    coded = link_columns([Candidate(1, 0.91234567, "ngram"), Candidate(2, 0.5, "ngram")], TERMS)
    assert coded == {"code": "C1", "code_term": "Dolor abdominal", "code_system": "S",
                     "concept_id": None, "link_score": 0.912346, "link_method": "ngram",
                     "link_candidates": ["C1", "C2"]}
    assert link_columns([], TERMS) == unlinked(True)
    assert unlinked(True)["link_candidates"] == [] and unlinked(False)["link_candidates"] is None
    assert set(unlinked(False)) == set(LINK_COLUMNS)
