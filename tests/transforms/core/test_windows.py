import numpy as np
import pytest

from transforms.core.windows import plan_windows


def check_plan(counts, sentences, budget, overlap):
    plans = plan_windows(counts, sentences, budget, overlap)
    cum = np.concatenate([[0], np.cumsum(counts)])
    owner = np.full(len(counts), -1)
    for k, p in enumerate(plans):
        assert cum[p.last] - cum[p.first] <= budget
        assert p.first <= p.own_first <= p.own_last <= p.last
        assert (owner[p.own_first:p.own_last] == -1).all()
        owner[p.own_first:p.own_last] = k
    assert (owner >= 0).all(), "every word is predicted by exactly one window"
    return plans, cum


def test_short_sentences_are_packed_whole():
    counts = np.array([3, 3, 3, 3, 3, 3])
    plans, _ = check_plan(counts, [0, 2, 4], budget=12, overlap=2)
    assert [(p.first, p.last) for p in plans] == [(0, 4), (4, 6)]


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_cover_each_word_once(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    budget = int(rng.integers(4, 64))
    counts = rng.integers(1, budget + 1, size=n) if seed % 3 == 0 else rng.integers(1, 4, size=n)
    sentences = sorted({0, *rng.integers(0, n, size=int(rng.integers(0, 20))).tolist()})
    plans, cum = check_plan(counts, sentences, budget, int(rng.integers(0, budget // 2 + 1)))
    starts = set(sentences)
    for p in plans:  # a window that is not a cut of a long sentence starts at a sentence
        if p.own_first == p.first and p.own_last == p.last and p.first not in starts:
            prev = max(s for s in starts if s < p.first)
            assert cum[p.last] - cum[prev] > budget


def test_a_long_sentence_cut_by_hand():
    # 16 one-token words, budget 10, overlap 4: windows 0-10 and 6-16 share words 6..9.
    # Word 6 sits 3 tokens from the first window's edge and 0 from the second's; 7: 2 vs 1;
    # 8: 1 vs 2; 9: 0 vs 3. So 6 and 7 belong to the first window, 8 and 9 to the second.
    plans = plan_windows(np.ones(16, dtype=int), [0], budget=10, overlap=4)
    assert [tuple(p) for p in plans] == [(0, 10, 0, 8), (6, 16, 8, 16)]


def test_overlap_words_go_to_the_window_where_they_sit_furthest_from_an_edge():
    rng = np.random.default_rng(7)
    counts = rng.integers(1, 4, 1000)
    plans, cum = check_plan(counts, [0], budget=100, overlap=30)
    assert len(plans) > 1
    for a, b in zip(plans[:-1], plans[1:]):
        assert cum[a.last] - cum[b.first] <= 30  # at most `overlap` tokens shared
        for i in range(b.first, a.last):
            in_a = min(cum[i] - cum[a.first], cum[a.last] - cum[i + 1])
            in_b = min(cum[i] - cum[b.first], cum[b.last] - cum[i + 1])
            owner = a if a.own_first <= i < a.own_last else b
            # the owner is the window where the word is furthest from an edge (ties: the first)
            assert (in_a if owner is a else in_b) == max(in_a, in_b)
            if in_a == in_b:
                assert owner is a


def test_rejects_a_word_longer_than_the_budget():
    with pytest.raises(ValueError):
        plan_windows(np.array([5, 20]), [0], budget=10, overlap=2)


