"""``pipeline.settled``: a reader that sees committed rows only, while a job commits."""

import pandas as pd
import pytest

from pipeline import settled
from tests.transforms.outputs.test_commit import Crash, document, token_of, write_run
from transforms.outputs import commit
from transforms.outputs.commit import finalize, own_output, recover


def spans(out):
    return sorted(pd.read_parquet(out / "spans").doc_id)


def test_a_commit_in_progress_is_waited_for_and_said(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0])])
    parts, _, dups = write_run(out, "r2", [document("a", "in/a.txt", [5])], commit=False)

    def killed(*args):
        raise Crash("killed after its commit entry, before its parts moved")

    monkeypatch.setattr(commit, "commit_part", killed)
    with pytest.raises(Crash):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r2", "r2", dups, [], token_of(out, "r2"))
    monkeypatch.undo()
    with pytest.raises(SystemExit) as stop:
        settled.main([str(out)])
    assert stop.value.code == 3 and '"committing": ["r2"]' in capsys.readouterr().out
    with pytest.raises(settled.NotSettled, match="r2 committing"):
        settled.read(str(out), lambda: spans(out), wait_s=0)
    recover(str(out), ["t"], "r3", own_output(str(out), "r3"))  # the next run finishes it
    settled.main([str(out)])
    assert '"settled": true' in capsys.readouterr().out


def test_a_read_that_a_commit_overtook_is_read_again(tmp_path):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0])])
    reads = []

    def reader():
        reads.append(spans(out))
        if len(reads) == 1:  # a job commits while this read runs
            write_run(out, "r2", [document("b", "in/b.txt", [1])])
        return reads[-1]

    assert settled.read(str(out), reader) == ["a", "b"] and reads == [["a"], ["a", "b"]]
