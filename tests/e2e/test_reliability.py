"""Bad input never crashes a job or disappears, and no document text reaches the logs."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import (E3C, HERMETIC_ENV, REPO, read_outputs, read_text, run_pipeline,
                            spaccc_files)

pytestmark = pytest.mark.e2e
MARKER = "ZQXPHIMARKER"


@pytest.fixture(scope="module")
def messy_run(smoke_tasks, tmp_path_factory):
    """One job over every kind of bad input, with a marker string in every text."""
    src = tmp_path_factory.mktemp("messy")
    real = [read_text(f) for f in spaccc_files(3)]
    (src / "ok.txt").write_text(f"{MARKER} {real[0]}", encoding="utf-8")
    (src / "bad-utf8.txt").write_bytes(f"{MARKER} dolor ".encode() + b"\xff\xfe tos")
    (src / "empty.txt").write_bytes(b"")
    (src / "blank.txt").write_bytes(b" \r\n\t \n")
    control = f"{MARKER}\x00 Fiebre\x07 de 39\r\ntos\rseca\u2028y\tdolor\x1b abdominal.\r\n"
    (src / "control.txt").write_bytes(control.encode("utf-8"))
    lines = [
        json.dumps({"id": "j-ok", "text": f"{MARKER} {real[1]}"}),
        "{" + MARKER + " not json",
        json.dumps({"text": f"{MARKER} sin id"}),
        json.dumps({"id": "j-notext"}),
        json.dumps({"id": "j-number", "text": 42}),
        json.dumps({"id": "dup", "text": f"{MARKER} {real[2]}"}),
        json.dumps({"id": "dup", "text": f"{MARKER} otra vez"}),
        json.dumps({"id": "j-fr", "text": f"{MARKER} Le patient présente une fièvre.", "lang": "fr"}),
        json.dumps({"id": "j-lang", "text": real[1], "lang": f"{MARKER} Juan, 45"}),
        json.dumps({"id": "j-surrogate\udc80", "text": f"{MARKER} fiebre"}),  # a lone \\udc80
        '{"id": "j-deep", "text": "x", "m": ' + "[" * 3000 + "]" * 3000 + "}",
    ]
    (src / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with gzip.open(E3C / "es.jsonl.gz", "rb") as f:
        e3c = b"".join(next(f) for _ in range(200))
    whole = gzip.compress(e3c)
    (src / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (src / "not-gzip.jsonl.gz").write_bytes(lines[0].encode())
    out = tmp_path_factory.mktemp("out")
    proc = run_pipeline("--input", str(src), "--output", str(out), "--tasks", str(smoke_tasks),
                        "--language", "es", env={"CLINICAL_NER_LOG_LEVEL": "DEBUG"})
    docs = pd.read_parquet(out / "documents")
    return out, proc, docs, control, len(lines[0].encode()) + 1


def test_every_record_ends_in_exactly_one_state(messy_run):
    _, _, docs, _, second_line = messy_run
    state = {r.doc_id: (r.status, r.reason) for r in docs.itertuples() if r.doc_id != "dup"}
    assert state["ok"][0] == "annotated" and state["control"][0] == "annotated"
    assert state["bad-utf8"] == ("failed", "read: invalid UTF-8 at byte 19")
    assert state["empty"] == ("skipped", "empty text")
    assert state["blank"] == ("skipped", "empty text")
    assert state["j-ok"][0] == "annotated"
    assert state[f"records.jsonl@{second_line}"][1] == (
        "read: not JSON (Expecting property name enclosed in double quotes at column 2)")
    assert state["j-notext"] == ("failed", "read: `text` is missing or not a string")
    assert state["j-number"] == ("failed", "read: `text` is missing or not a string")
    assert state["j-fr"] == ("skipped", "no task supports language 'fr'")
    assert state["j-lang"] == ("skipped", "the record's language is not a language code (ISO 639)")
    assert any(r[1] == "read: no `id` field" for r in state.values())
    assert ("failed", "read: `id` holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF)"
            ) in state.values()
    assert ("failed", "read: JSON nested too deep") in state.values()
    dup = docs[docs.doc_id == "dup"].sort_values("status")
    assert dup.status.tolist() == ["annotated", "skipped"]
    assert dup.reason.iloc[1].startswith("duplicate id: kept the record at ")
    truncated = docs[docs.source.str.endswith("truncated.jsonl.gz")]
    assert (truncated.status == "annotated").sum() >= 50
    assert (truncated.status == "failed").sum() == 1
    assert "EOFError" in truncated[truncated.status == "failed"].reason.iloc[0]
    not_gzip = docs[docs.source.str.endswith("not-gzip.jsonl.gz")]
    assert not_gzip.status.tolist() == ["failed"] and "BadGzipFile" in not_gzip.reason.iloc[0]
    assert set(docs.status) == {"annotated", "skipped", "failed"}


def test_counters_agree_with_the_documents_table(messy_run):
    out, _, docs, _, _ = messy_run
    assert MARKER not in (out / "run.json").read_text()  # a language field's text included
    record = json.loads((out / "run.json").read_text())
    counts = record["counts"]
    assert {s: counts.get(f"documents/{s}", 0) for s in ("annotated", "skipped", "failed")} == \
        docs.status.value_counts().to_dict()
    annotated = docs[docs.status == "annotated"]
    spans = pd.read_parquet(out / "spans")
    # the distribution covers every document the models annotated: the later record of the
    # duplicate id was, before the commit skipped it and dropped its spans
    dups = docs.reason.str.startswith("duplicate id").sum()
    assert dups == 1 and counts["documents/duplicate_ids"] == 1
    per_doc = record["distributions"]["documents/spans_per_document"]
    assert per_doc["count"] == len(annotated) + dups
    assert per_doc["sum"] >= len(spans)
    by_label = spans.groupby(["task", "label"]).size()
    assert {k: v for k, v in counts.items() if k.startswith("spans/")} == {
        f"spans/{t}/{lab}": n for (t, lab), n in by_label.items()}
    for task in ("procedure", "symptom"):
        tokens = record["distributions"][f"windows/tokens_{task}"]
        assert counts[f"windows/{task}"] == tokens["count"]
        assert counts[f"tokens/real_{task}"] == tokens["sum"]  # every window ran once
        latency = record["distributions"][f"RunInference_{task}/inference_batch_latency_micro_secs"]
        assert latency["count"] > 0 and latency["min"] > 0


def test_failures_are_dead_letters_without_text(messy_run):
    out, _, docs, _, _ = messy_run
    errors = pd.read_parquet(out / "errors")
    failed = docs[docs.status == "failed"]
    assert sorted(errors.doc_id) == sorted(failed.doc_id)
    assert set(errors.stage) == {"read"} and errors.source.str.len().gt(0).all()
    for column in errors.columns:
        assert not errors[column].astype(str).str.contains(MARKER).any()


def test_offsets_survive_control_characters_and_line_breaks(messy_run):
    out, _, _, control, _ = messy_run
    for task in ("procedure", "symptom"):
        tsv = pd.read_csv(out / f"{task}.tsv", sep="\t", keep_default_na=False)
        rows = tsv[tsv.filename == "control"]
        assert len(rows) > 0
        for r in rows.itertuples():
            assert r.text == control[r.start_span:r.end_span]


def test_no_document_text_in_the_logs(messy_run):
    _, proc, _, _, _ = messy_run  # logged at DEBUG, Beam's own loggers included
    assert proc.returncode == 0 and "DEBUG" in proc.stderr
    assert MARKER not in proc.stdout and MARKER not in proc.stderr


def test_a_10_mb_document(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    base = "\n".join(read_text(f) for f in spaccc_files(40))
    text = (base * (10_000_000 // len(base) + 1))[:10_000_000]
    (src / "huge.txt").write_text(text, encoding="utf-8")
    run_pipeline("--input", str(src), "--output", str(tmp_path / "out"), "--tasks",
                 str(smoke_tasks), "--language", "es")
    docs = pd.read_parquet(tmp_path / "out" / "documents")
    assert docs.status.tolist() == ["annotated"] and docs.n_chars.tolist() == [10_000_000]
    spans = pd.read_parquet(tmp_path / "out" / "spans", columns=["start", "end", "text"])
    assert len(spans) > 100_000
    sample = spans.sample(2000, random_state=0)
    assert all(t == text[s:e] for s, e, t in zip(sample.start, sample.end, sample.text))


def _worker_pids() -> list[int]:
    """Beam SDK worker processes running on this machine."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"sdk_worker_main" in cmd and not cmd.startswith(b"/bin/sh"):
                pids.append(int(entry))
    return pids


def test_a_killed_worker_loses_nothing_and_a_rerun_completes(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in spaccc_files(60):
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    args = ["--input", str(src), "--output", str(out), "--tasks", str(smoke_tasks),
            "--language", "es", "--direct_num_workers", "2",
            "--direct_running_mode", "multi_processing"]
    env = {**os.environ, **HERMETIC_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(_worker_pids()) < 2 and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3)  # let it get going
    victims = _worker_pids()
    assert victims, "no worker process to kill"
    os.kill(victims[0], signal.SIGKILL)
    rc = proc.wait(timeout=300)
    # the job stops (the lost worker's bundle cannot be finished) and commits nothing
    assert rc != 0
    assert not (out / "procedure.tsv").exists()
    assert not list(out.glob("documents/*.parquet")) and not list(out.glob("_shards/*/*"))
    run_pipeline(*args)  # rerunning the same command completes the night
    clean = tmp_path / "clean"
    run_pipeline("--input", str(src), "--output", str(clean), "--tasks", str(smoke_tasks),
                 "--language", "es")
    docs = pd.read_parquet(out / "documents")
    assert sorted(docs.doc_id) == sorted(f.stem for f in src.glob("*.txt"))
    for task in ("procedure", "symptom"):
        got = pd.read_csv(out / f"{task}.tsv", sep="\t", keep_default_na=False)
        want = pd.read_csv(clean / f"{task}.tsv", sep="\t", keep_default_na=False)
        assert sorted(got.itertuples(index=False)) == sorted(want.itertuples(index=False))


@pytest.fixture(scope="module")
def night(smoke_tasks, tmp_path_factory):
    """A completed run over 8 cases: the output a forced rerun then replaces."""
    src = tmp_path_factory.mktemp("night-in")
    for f in spaccc_files(8):
        shutil.copy(f, src / f.name)
    out = tmp_path_factory.mktemp("night") / "out"
    args = ["--input", str(src), "--tasks", str(smoke_tasks), "--language", "es"]
    run_pipeline(*args, "--output", str(out))
    return args, out


def _spans(out):
    spans = pd.read_parquet(out / "spans").drop(columns=["source"])
    return sorted(spans.astype(object).where(spans.notna(), None).itertuples(index=False,
                                                                             name=None))


@pytest.mark.parametrize("moment", ["inferring", "committing", "committing+0.05",
                                    "committing+0.3"])
def test_a_forced_rerun_killed_at_any_moment_then_rerun_equals_one_clean_run(night, tmp_path,
                                                                             moment):
    args, first = night
    out = tmp_path / "out"
    shutil.copytree(first, out)
    before = set((out / "spans").iterdir())
    env = {**os.environ, **HERMETIC_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.run", *args, "--output", str(out),
                             "--force"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if moment == "inferring" and list(out.glob(".tmp-*/*")):
            break
        if moment.startswith("committing") and set((out / "spans").iterdir()) - before:
            time.sleep(float(moment.partition("+")[2] or 0))
            break
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before the moment ({moment}) came"
    os.killpg(proc.pid, signal.SIGKILL)  # the job, its workers, at once
    proc.wait(timeout=60)
    run_pipeline(*args, "--output", str(out))  # the same command again, without --force
    assert read_outputs(out) == read_outputs(first)
    assert _spans(out) == _spans(first)
    assert not list(out.glob(".tmp-*"))


def test_a_second_job_on_the_same_output_is_refused_in_one_line(night, tmp_path):
    args, first = night
    out = tmp_path / "out"
    env = {**os.environ, **HERMETIC_ENV}
    cmd = [sys.executable, "-m", "pipeline.run", *args, "--output", str(out)]
    one = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "_lock").exists() and one.poll() is None:
        time.sleep(0.05)
    os.killpg(one.pid, signal.SIGSTOP)  # still at work when the second comes, however slow
    try:
        two = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        os.killpg(one.pid, signal.SIGCONT)
    assert one.wait(timeout=300) == 0
    assert two.returncode == 1
    last = two.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.run: ") and "is being written by run " in last
    assert read_outputs(out) == read_outputs(first)  # one job's rows, once
    assert not (out / "_lock").exists()


def test_an_output_inside_the_input_is_refused_before_anything_is_read(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(spaccc_files(1)[0], src)
    proc = run_pipeline("--input", str(src), "--output", str(src / "ner"), "--tasks",
                        str(smoke_tasks), "--language", "es", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("pipeline.run: --output ")
    assert "is inside --input" in proc.stderr and not (src / "ner").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"),
                    reason="needs root and capsh to run the job without DAC override")
def test_real_permission_errors_a_file_is_a_dead_letter_a_folder_a_set_up_error(smoke_tasks,
                                                                                 tmp_path):
    src = tmp_path / "in"
    (src / "ward").mkdir(parents=True)
    for f, where in zip(spaccc_files(3), (src, src, src / "ward")):
        shutil.copy(f, where)
    locked = sorted(src.glob("*.txt"))[0]
    locked.chmod(0)

    def job(out):  # as root without the capabilities that ignore file permissions
        cmd = " ".join([sys.executable, "-m", "pipeline.run", "--input", str(src), "--output",
                        str(out), "--tasks", str(smoke_tasks), "--language", "es"])
        return subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--",
                               "-c", cmd], cwd=REPO, env={**os.environ, **HERMETIC_ENV},
                              capture_output=True, text=True, timeout=600)

    ran = job(tmp_path / "out")
    assert ran.returncode == 0, ran.stderr[-2000:]
    docs = pd.read_parquet(tmp_path / "out" / "documents")
    failed = docs[docs.status == "failed"]
    assert failed.doc_id.tolist() == [locked.stem] and len(docs) == 3
    assert failed.reason.tolist() == ["read: not readable (PermissionError)"]
    (src / "ward").chmod(0)
    stopped = job(tmp_path / "out2")
    assert stopped.returncode == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.run: ") and "cannot list" in last and "ward" in last
    (src / "ward").chmod(0o755)


def test_the_same_input_spelt_another_way_is_not_done_again(night, tmp_path):
    args, first = night
    src, rest = args[1], args[2:]
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (tmp_path / "link").symlink_to(src)
    for spelling in (f"{src}//", f"{src}/.", str(tmp_path / "link")):
        again = run_pipeline("--input", spelling, *rest, "--output", str(out))
        assert "nothing to do" in again.stderr, spelling
    assert read_outputs(out) == read_outputs(first)
