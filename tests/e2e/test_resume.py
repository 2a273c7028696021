"""Incremental runs: a rerun skips the input shards already done and redoes the rest."""

import json
import shutil

import pytest

from tests.conftest import read_outputs, read_text, run_pipeline, spaccc_files

pytestmark = pytest.mark.e2e


def snapshot(out):
    """Every output file (but the run record) with its bytes and modification time."""
    return {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "run.json"}


def counts(out):
    return json.loads((out / "run.json").read_text())["counts"]


def inferences(c):
    return sum(v for k, v in c.items() if k.endswith("num_inferences"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four .txt cases and a JSONL shard of three, plus a later JSONL shard of two."""
    root = tmp_path_factory.mktemp("resume")
    src, late = root / "in", root / "late.jsonl"
    src.mkdir()
    files = spaccc_files(9)
    for f in files[:4]:
        shutil.copy(f, src / f.name)
    (src / "batch.jsonl").write_text("".join(
        json.dumps({"id": f.stem, "text": read_text(f)}) + "\n" for f in files[4:7]))
    late.write_text("".join(
        json.dumps({"id": f.stem, "text": read_text(f)}) + "\n" for f in files[7:9]))
    return src, late


def test_reruns_do_only_what_is_not_done(inputs, smoke_tasks, tmp_path):
    src, late = inputs
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    common = ["--tasks", str(smoke_tasks), "--language", "es", "--precision", "fp32"]

    def annotate(*extra):
        proc = run_pipeline("--input", str(src), "--output", str(out), *common, *extra)
        return counts(out), proc

    first, _ = annotate()
    assert first["documents/read"] == 7 and inferences(first) > 0
    assert len(list((out / "_shards").glob("*/*.*.json"))) == 5
    before = snapshot(out)

    _, proc = annotate()  # nothing to do: no document read, no inference, no file touched
    record = json.loads((out / "run.json").read_text())
    assert record["counts"] == first  # run.json still describes the run that did the work
    again = record["last_check"]["counts"]
    assert again.get("documents/read", 0) == 0 and again["shards/complete_skipped"] == 5
    assert snapshot(out) == before
    assert "5 complete (skipped), 0 to do" in proc.stderr

    shutil.copy(late, src / late.name)  # a late shard: only it is read
    added, _ = annotate()
    assert added["documents/read"] == 2 and added["shards/to_do"] == 1
    run_pipeline("--input", str(src), "--output", str(scratch), *common)
    expected = read_outputs(scratch)
    assert read_outputs(out) == expected
    assert len(expected[1]) == 9

    (marker,) = [m for m in (out / "_shards").glob("*/*.*.json")
                 if json.loads(m.read_text())["source"].endswith("batch.jsonl")]
    assert json.loads(marker.read_text())["counts"]["documents"] == 3
    marker.unlink()  # only that shard is redone, its rows replaced, not doubled
    redone, _ = annotate()
    assert redone["documents/read"] == 3 and redone["shards/complete_skipped"] == 5
    assert read_outputs(out) == expected

    forced, _ = annotate("--force")
    assert forced["documents/read"] == 9
    assert read_outputs(out) == expected
    last = json.loads((out / "run.json").read_text())["run_id"]
    for kind in ("spans", "documents"):  # earlier runs' files gave up all their rows
        files = list((out / kind).glob("*.parquet"))
        assert files and all(f.name.startswith(f"{kind}-{last}-") for f in files)
