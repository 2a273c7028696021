"""Token-budget batches and bounded document groups."""

import numpy as np
from apache_beam.utils.windowed_value import WindowedValue

from transforms.batch import GroupDocuments, token_batches, work_tokens
from transforms.core.records import Document, Work
from transforms.segment import pack


def test_token_batches_sort_and_respect_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 512, 500).tolist() + [600]
    batches = token_batches(lengths, lambda n: n, budget=2048, max_items=16)
    assert sorted(x for b in batches for x in b) == sorted(lengths)
    for b in batches:
        assert b == sorted(b) and len(b) <= 16
        assert max(b) * len(b) <= 2048 or len(b) == 1
    flat = [x for b in batches for x in b]
    assert flat == sorted(flat)  # similar lengths together: padding only to the batch's longest


def test_a_longer_window_joins_a_batch_only_where_it_pads_the_others_little():
    # three windows of 64 and one of 96: the 96 would pad them by 3 x 32 = 96 sub-words
    lengths = [64, 64, 64, 96, 96, 100]
    assert token_batches(lengths, lambda n: n, budget=4096, max_items=100, mix=64) == [
        [64, 64, 64], [96, 96, 100]]
    assert token_batches(lengths, lambda n: n, budget=4096, max_items=100) == [lengths]
    rng = np.random.default_rng(0)
    windows = rng.integers(5, 512, 500).tolist()
    padding = {mix: sum(max(b) * len(b) - sum(b) for b in token_batches(
        windows, lambda n: -(-n // 32) * 32, budget=8192, max_items=256, mix=mix))
        for mix in (None, 64)}
    assert padding[64] < padding[None] / 2


def test_batches_are_filled_up_to_the_budget():
    # 40 tokens of budget hold exactly four windows of 10, and 2 x 20 or 1 x 30 + nothing
    assert token_batches([10] * 8, lambda n: n, budget=40, max_items=100) == [[10] * 4] * 2
    assert token_batches([20, 20, 30], lambda n: n, budget=40, max_items=100) == [[20, 20], [30]]
    assert token_batches([10] * 5, lambda n: n, budget=1000, max_items=2) == [[10, 10]] * 2 + [[10]]
    assert token_batches([50], lambda n: n, budget=40, max_items=10) == [[50]]


def work(n_tokens: int, i: int = 0) -> Work:
    ids = np.zeros(n_tokens, np.int32)
    w = pack([(ids, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))])
    return Work(Document(f"k{i}", f"d{i}", "x", "s"), {"tok": w})


def test_groups_hold_about_the_budget_and_nothing_is_lost():
    fn = GroupDocuments(budget=1000, max_documents=50)
    fn.start_bundle()
    items = [work(300, i) for i in range(10)] + [Work(Document("e", "e", "", "s"))] * 3
    groups = [g for w in items for g in fn.process(w)]
    tail = list(fn.finish_bundle())
    assert all(isinstance(t, WindowedValue) for t in tail)
    groups += [t.value for t in tail]
    # 300-token documents: a group closes at the fourth (1,200 >= 1,000 tokens)
    assert [len(g) for g in groups] == [4, 4, 5]
    assert [w.doc.key for g in groups for w in g] == [w.doc.key for w in items]
    assert [sum(work_tokens(w) for w in g) for g in groups[:2]] == [1200, 1200]


def test_groups_close_at_max_documents():
    fn = GroupDocuments(budget=10 ** 9, max_documents=3)
    fn.start_bundle()
    groups = [g for i in range(7) for g in fn.process(work(5, i))]
    assert [len(g) for g in groups] == [3, 3]
    assert [len(t.value) for t in fn.finish_bundle()] == [1]
