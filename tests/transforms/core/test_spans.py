import numpy as np
import pytest

from transforms.core.spans import Span, bio_scheme, decode_bio, reference_decode, reference_vote

SCHEME = bio_scheme({0: "O", 1: "B-SYMPTOM", 2: "I-SYMPTOM", 3: "B-PROC", 4: "I-PROC"})
O, B, I, BP, IP = 0, 1, 2, 3, 4


def decode(labels, probs=None):
    n = len(labels)
    starts = np.arange(n) * 10
    probs = np.full(n, 0.5) if probs is None else np.asarray(probs)
    return [(s.label, s.start // 10, (s.end - 5) // 10) for s in
            decode_bio(starts, starts + 5, np.array(labels), probs, SCHEME)]


def test_bio_spans_are_word_aligned():
    assert decode([B, I, I, O, B, O, BP, IP]) == [
        ("SYMPTOM", 0, 2), ("SYMPTOM", 4, 4), ("PROC", 6, 7)]


def test_b_after_b_starts_a_new_mention():
    assert decode([B, B, I]) == [("SYMPTOM", 0, 0), ("SYMPTOM", 1, 2)]


def test_orphan_i_begins_a_mention():
    # I- after O, at the start, or after another type opens a new mention of its own type.
    assert decode([I, I, O, I]) == [("SYMPTOM", 0, 1), ("SYMPTOM", 3, 3)]
    assert decode([B, IP, IP]) == [("SYMPTOM", 0, 0), ("PROC", 1, 2)]


def test_score_is_the_mean_word_probability():
    spans = decode_bio(np.array([0, 6]), np.array([5, 9]), np.array([B, I]),
                       np.array([0.9, 0.5]), SCHEME)
    assert spans == [Span("SYMPTOM", 0, 9, pytest.approx(0.7))]


def test_empty_input():
    assert decode([]) == []


@pytest.mark.parametrize("labels", [
    {0: "O", 1: "PER", 2: "I-PER"},
    {0: "B-X", 1: "I-X"},
    {0: "O", 1: "O", 2: "B-X", 3: "I-X"},
    {0: "O", 1: "B-X"},
    {0: "O", 2: "B-X", 3: "I-X"},
])
def test_non_bio_label_maps_are_refused(labels):
    with pytest.raises(ValueError):
        bio_scheme(labels)


def test_label_order_comes_from_the_map():
    s = bio_scheme({"0": "I-X", "1": "O", "2": "B-X"})
    assert s.id2label == ("I-X", "O", "B-X")
    assert decode_bio(np.array([0, 2]), np.array([1, 3]), np.array([2, 0]),
                      np.array([1.0, 1.0]), s)[0].label == "X"


def test_reference_vote_prefers_first_seen_and_entities_over_o():
    assert reference_vote(["O", "B-X", "B-X"]) == "B-X"
    assert reference_vote(["O", "B-X"]) == "B-X"
    assert reference_vote(["I-X", "B-X"]) == "I-X"
    assert reference_vote(["O", "O", "B-X"]) == "O"


def test_reference_decode_rules():
    text = "(dolor) abdominal, fiebre tos."
    words = [(0, 1), (1, 6), (6, 7), (8, 17), (17, 18), (19, 25), (26, 29), (29, 30)]
    labels = ["B-S", "I-S", "I-S", "I-S", "I-S", "I-P", "B-S", "I-S"]
    votes = [(s, e, lab, 1.0) for (s, e), lab in zip(words, labels)]
    spans = reference_decode(text, votes)
    # Edge punctuation trimmed; I-P of another type ignored without closing the mention.
    assert [(text[s.start:s.end], s.label) for s in spans] == [
        ("dolor) abdominal", "S"), ("tos", "S")]
    # A mention that is only punctuation disappears.
    assert reference_decode("( x", [(0, 1, "B-S", 1.0), (2, 3, "O", 1.0)]) == []
