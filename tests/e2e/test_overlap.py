"""Jobs that overlap on one output, through the real command: a holder paused past its lease,
one whose clock is wrong, a cluster job beside a local run. Each ends with the outputs of one
clean run, the job that lost the output stopped in one line with nothing of it visible."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import HERMETIC_ENV, REPO, read_outputs, run_pipeline, spaccc_files

pytestmark = pytest.mark.e2e
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
TAKEN_OVER = "another job took this output over while it ran"


@pytest.fixture(scope="module")
def clean(smoke_tasks, tmp_path_factory):
    """Eight cases and one clean run of them: what every overlap must end as."""
    src = tmp_path_factory.mktemp("overlap-in")
    for f in spaccc_files(8):
        shutil.copy(f, src / f.name)
    args = ["--input", str(src), "--tasks", str(smoke_tasks), "--language", "es"]
    out = tmp_path_factory.mktemp("overlap-clean") / "out"
    run_pipeline(*args, "--output", str(out))
    return args, read_outputs(out)


def start(*cmd: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m CMD`` in its own process group; its log lines gathered in ``proc.lines``."""
    proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO,
                            env={**os.environ, **HERMETIC_ENV, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    proc.lines = []
    proc.reader = threading.Thread(target=lambda: proc.lines.extend(proc.stderr), daemon=True)
    proc.reader.start()
    return proc


def last_line(proc: subprocess.Popen) -> str:
    """The last line ``proc`` wrote, once it ended and all it wrote is read (a loaded machine
    may read its stderr late: no fixed wait)."""
    proc.wait(timeout=300)
    proc.reader.join(timeout=120)
    return proc.lines[-1].strip()


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"the first job ended or stalled before {what}")


def expire_lease(out: Path) -> None:
    """The holder's lease runs out (what two minutes of a paused holder come to)."""
    lock = out / "_lock"
    record = json.loads(lock.read_text())
    lock.write_text(json.dumps({**record, "expires": time.time() - 1}))


@contextlib.contextmanager
def paused(proc: subprocess.Popen):
    """``proc``'s process group stopped (``SIGSTOP``: its lease renewals too) in the block."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def ends_fenced(proc: subprocess.Popen, out: Path, want) -> None:
    """``proc`` stops, fenced out, and the output holds one clean run's rows."""
    last = last_line(proc)
    assert read_outputs(out) == want and not list(out.glob(".tmp-*"))
    assert proc.returncode == 1 and last.startswith("pipeline.run: the job stopped: "), last
    assert TAKEN_OVER in last


@pytest.mark.parametrize("moment", ["before any part", "inferring"])
def test_a_holder_paused_past_its_lease_cannot_commit_over_the_job_that_took_over(
        clean, tmp_path, moment):
    args, want = clean
    out = tmp_path / "out"
    one = start("pipeline.run", *args, "--output", str(out))
    if moment == "before any part":  # it planned its shards (every one to do) and took its
        # token: an entry of the output's log (paused before that, it is simply the newer job)
        wait_for(lambda: any("input: 8 shards" in line for line in one.lines)
                 and list(out.glob("_log/*.json")), one, "it planned its shards")
    else:
        wait_for(lambda: list(out.glob(".tmp-*/*")), one, "it wrote a part")
    with paused(one):  # a VM pause, a long GC
        expire_lease(out)
        run_pipeline(*args, "--output", str(out))  # the next night's job is admitted
        assert read_outputs(out) == want
    ends_fenced(one, out, want)
    again = run_pipeline(*args, "--output", str(out))
    assert "nothing to do" in again.stderr and read_outputs(out) == want


@pytest.mark.skipif(not FAKETIME.exists(), reason="needs libfaketime (apt-get install faketime)")
def test_a_job_whose_clock_is_three_minutes_behind_is_taken_over_without_loss(clean, tmp_path):
    args, want = clean
    out = tmp_path / "out"
    # its lease looks run out to every other machine from the start
    one = start("pipeline.run", *args, "--output", str(out),
                env={"LD_PRELOAD": str(FAKETIME), "FAKETIME": "-180",
                     "DONT_FAKE_MONOTONIC": "1"})
    wait_for(lambda: list(out.glob(".tmp-*/*")), one, "it wrote a part")
    with paused(one):  # so that the second job comes before its commit
        lock = json.loads((out / "_lock").read_text())
        assert lock["expires"] < time.time()  # a lease already run out, by the store's clock
        run_pipeline(*args, "--output", str(out))
    ends_fenced(one, out, want)


def test_a_local_run_beside_a_cluster_job_takes_the_output_and_the_cluster_job_stops(
        clean, tmp_path):
    args, want = clean
    out = tmp_path / "out"
    cluster = start("tests.fixtures.cluster_job", *args, "--output", str(out))
    wait_for(lambda: list(out.glob(".tmp-*/*")), cluster, "it wrote a part")
    with paused(cluster):  # the cluster job is slower than the local one
        assert not (out / "_lock").exists()  # a cluster job holds no lease until it commits
        run_pipeline(*args, "--output", str(out))
    ends_fenced(cluster, out, want)


def commit_entry(out: Path) -> bool:
    """Whether a run's commit entry is in the output's log."""
    for entry in out.glob("_log/*.json"):
        try:
            if json.loads(entry.read_text())["kind"] == "commit":
                return True
        except (OSError, ValueError):
            pass
    return False


@pytest.mark.parametrize("moment", ["inferring", "committed"])
def test_ctrl_c_says_what_became_of_the_commit_and_the_next_run_completes(clean, tmp_path,
                                                                         moment):
    args, want = clean
    out = tmp_path / "out"
    one = start("pipeline.run", *args, "--output", str(out))
    if moment == "inferring":
        wait_for(lambda: list(out.glob(".tmp-*/*")), one, "it wrote a part")
        one.send_signal(signal.SIGINT)  # Ctrl-C: the main process
    else:
        wait_for(lambda: commit_entry(out), one, "its commit entry")
        with paused(one):
            one.send_signal(signal.SIGINT)  # delivered once it runs again
    last = last_line(one)
    assert one.returncode == 1 and last.startswith("pipeline.run: the job was interrupted. ")
    assert "fault" not in last
    if moment == "inferring":
        assert "Nothing of this run was committed" in last
    else:
        assert "This run's commit was recorded before it stopped" in last
        if list(out.glob("spans/*.parquet")):  # never a row twice, whatever the moment
            spans = pd.read_parquet(out / "spans")
            assert not spans.duplicated(["doc_id", "task", "start", "end"]).any()
    run_pipeline(*args, "--output", str(out))
    assert read_outputs(out) == want
