import numpy as np
import pytest

from tests.conftest import SPACCC, read_text
from transforms.segment import word_windows
from transforms.windows import plan_windows
from transforms.words import split_words


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


def test_overlap_words_go_to_the_window_where_they_sit_furthest_from_an_edge():
    counts = np.ones(1000, dtype=int)
    plans, cum = check_plan(counts, [0], budget=100, overlap=30)
    assert len(plans) > 1
    for a, b in zip(plans[:-1], plans[1:]):
        assert a.last - b.first <= 30  # at most `overlap` tokens shared
        for i in range(b.first, a.last):
            in_a = min(cum[i] - cum[a.first], cum[a.last] - cum[i + 1])
            in_b = min(cum[i] - cum[b.first], cum[b.last] - cum[i + 1])
            owner = a if a.own_first <= i < a.own_last else b
            assert (in_a if owner is a else in_b) >= min(in_a, in_b)


def test_rejects_a_word_longer_than_the_budget():
    with pytest.raises(ValueError):
        plan_windows(np.array([5, 20]), [0], budget=10, overlap=2)


def assert_windows_predict_each_word_once(text, tokenizer, windows, max_tokens=512):
    s, e = split_words(text)
    predicted = np.concatenate([w.starts for w in windows])
    assert sorted(predicted.tolist()) == sorted(set(predicted.tolist()))
    kept = {int(a) for a, b in zip(s, e) if tokenizer([text[a:b]], is_split_into_words=True,
                                                      add_special_tokens=False).input_ids}
    assert set(predicted.tolist()) == kept
    for w in windows:
        assert len(w.input_ids) <= max_tokens
        assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
    for w in windows[:3]:  # each position is the word's first sub-word
        for pos, a, b in list(zip(w.positions, w.starts, w.ends))[:50]:
            first = tokenizer([text[a:b]], is_split_into_words=True,
                              add_special_tokens=False).input_ids[0]
            assert w.input_ids[pos] == first


def test_document_of_5000_words(tokenizer):
    texts, n = [], 0
    for path in sorted((SPACCC / "txt").glob("*.txt")):
        texts.append(read_text(path))
        n += len(split_words(texts[-1])[0])
        if n >= 5000:
            break
    text = "\n".join(texts)
    windows = word_windows(text, tokenizer)
    assert len(windows) > 5
    assert_windows_predict_each_word_once(text, tokenizer, windows)
    # Sentences are packed: windows are well filled, not one per line.
    assert np.mean([len(w.input_ids) for w in windows]) > 300


def test_single_sentence_of_2000_tokens_is_cut_with_overlap(tokenizer):
    two_longest = sorted((SPACCC / "txt").glob("*.txt"), key=lambda f: f.stat().st_size)[-2:]
    text = " ".join(read_text(f) for f in two_longest)
    for mark in "\n.?!":
        text = text.replace(mark, ",")
    s, e = split_words(text)
    ids = tokenizer([text[a:b] for a, b in zip(s, e)], is_split_into_words=True,
                    add_special_tokens=False, verbose=False).input_ids
    assert len(ids) >= 2000
    windows = word_windows(text, tokenizer, max_tokens=512, overlap=128)
    assert len(windows) >= 5
    assert_windows_predict_each_word_once(text, tokenizer, windows)
    assert all(len(w.input_ids) >= 400 for w in windows[:-1])


def test_pathological_word_is_capped(tokenizer):
    text = "dolor " + "x9" * 3000 + " abdominal"
    windows = word_windows(text, tokenizer, max_tokens=64, overlap=16)
    assert_windows_predict_each_word_once(text, tokenizer, windows, max_tokens=64)


def test_token_batches_sort_and_respect_the_budget():
    from transforms.batch import token_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 512, 500).tolist() + [600]
    batches = token_batches(lengths, lambda n: n, budget=2048, max_items=16)
    assert sorted(x for b in batches for x in b) == sorted(lengths)
    for b in batches:
        assert b == sorted(b) and len(b) <= 16
        assert max(b) * len(b) <= 2048 or len(b) == 1
    flat = [x for b in batches for x in b]
    assert flat == sorted(flat)  # similar lengths together: padding only to the batch's longest
