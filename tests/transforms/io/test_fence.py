"""The output's log of tokens: create-only entries, the newest owner alone commits."""

import threading

import fsspec
import pytest

from transforms.io import fence


def test_owners_are_numbered_in_order_and_only_the_newest_commits(tmp_path):
    fs, root = fsspec.core.url_to_fs(str(tmp_path / "out"))
    one = fence.take(fs, root, "r1", dict)
    two = fence.take(fs, root, "r2", dict)
    assert (one, two) == (1, 2)
    with pytest.raises(fence.Fenced, match=r"run r2 \(host .*\) took the output over"):
        fence.commit(fs, root, "r1", one, {"parts": {}})
    assert fence.commit(fs, root, "r2", two, {"parts": {}}) == 3
    assert fence.commit(fs, root, "r2", two, {"parts": {}}) == 3  # a retry finds its entry
    assert [(e.kind, e.run) for e in fence.entries(fs, root)] == [
        ("own", "r1"), ("own", "r2"), ("commit", "r2")]


def test_racing_takers_each_get_an_entry_of_their_own(tmp_path):
    fs, root = fsspec.core.url_to_fs(str(tmp_path / "out"))
    tokens, threads = [], [threading.Thread(target=lambda i=i: tokens.append(
        fence.take(fs, root, f"r{i}", dict))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(tokens) == list(range(1, 9))
    assert sorted(e.run for e in fence.entries(fs, root)) == sorted(f"r{i}" for i in range(8))


def test_a_pruned_token_is_fenced_and_told_who_owns_the_output(tmp_path):
    fs, root = fsspec.core.url_to_fs(str(tmp_path / "out"))
    old = fence.take(fs, root, "r1", dict)
    new = fence.take(fs, root, "r2", dict)
    fence.prune(fs, root, new)
    assert fence.newer_owner(fs, root, "r1", old).run == "r2"
    assert fence.newer_owner(fs, root, "r2", new) is None


def test_an_entry_that_is_not_one_counts_as_a_newer_owner(tmp_path):
    fs, root = fsspec.core.url_to_fs(str(tmp_path / "out"))
    token = fence.take(fs, root, "r1", dict)
    (tmp_path / "out" / "_log" / f"{token + 1:020d}.json").write_text("not json")
    with pytest.raises(fence.Fenced, match="another job took the output over"):
        fence.check_owner(fs, root, "r1", token)
