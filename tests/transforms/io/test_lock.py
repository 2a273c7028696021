"""One writer per output: the lease on ``<out>/_lock``."""

import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import unquote

import pytest

from transforms.io.lock import LOCK, OutputBusy, OutputLock


def test_a_second_job_is_refused_naming_the_first_until_it_ends(tmp_path):
    out = str(tmp_path / "out")
    with OutputLock(out, "r1"):
        with pytest.raises(OutputBusy, match=r"being written by run r1 \(host .*pid "
                                             rf"{os.getpid()}"):
            OutputLock(out, "r2").acquire()
        assert json.loads((tmp_path / "out" / LOCK).read_text())["run_id"] == "r1"
    assert not (tmp_path / "out" / LOCK).exists()
    with OutputLock(out, "r2"):  # free again
        pass


def write_lock(path, **record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": "old", "host": socket.gethostname(),
                                "pid": os.getpid(), "expires": time.time() + 60, **record}))


@pytest.mark.parametrize("left", [{"expires": time.time() - 1}, "dead pid", "half written"],
                         ids=["lease ran out", "process gone", "unreadable"])
def test_a_lock_left_by_a_job_that_died_is_taken_over(tmp_path, left):
    path = tmp_path / "out" / LOCK
    if left == "dead pid":
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True)
        write_lock(path, pid=int(child.stdout))
    elif left == "half written":
        path.parent.mkdir(parents=True)
        path.write_text('{"run_id": "old", "ho')
    else:
        write_lock(path, **left)
    with OutputLock(str(tmp_path / "out"), "new"):
        assert json.loads(path.read_text())["run_id"] == "new"


def test_a_live_job_on_another_host_keeps_its_lock_until_its_lease_ends(tmp_path):
    write_lock(tmp_path / "out" / LOCK, host="elsewhere", pid=1)
    with pytest.raises(OutputBusy, match="host elsewhere"):
        OutputLock(str(tmp_path / "out"), "new").acquire()


def test_the_holder_renews_its_lease(tmp_path):
    with OutputLock(str(tmp_path / "out"), "r1", lease_s=0.4):
        time.sleep(1.0)  # past the first lease: renewed meanwhile
        with pytest.raises(OutputBusy):
            OutputLock(str(tmp_path / "out"), "r2").acquire()


@pytest.mark.e2e
def test_s3_creates_the_lock_only_where_none_exists(s3_server):
    import s3fs

    s3fs.S3FileSystem().mkdir("lockbkt")  # moto enforces If-None-Match: * as S3 does
    with OutputLock("s3://lockbkt/out", "r1"):
        with pytest.raises(OutputBusy, match="run r1"):
            OutputLock("s3://lockbkt/out", "r2").acquire()
    with OutputLock("s3://lockbkt/out", "r2"):
        pass


@pytest.mark.e2e
def test_gcs_creates_the_lock_with_a_generation_precondition(gcs_emulator, monkeypatch):
    """The emulator ignores preconditions; Cloud Storage fails an upload with
    ifGenerationMatch=0 where the object exists (412, which gcsfs raises as FileExistsError):
    the request must carry it, and the refusal must follow from it."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", project="test")
    fs.mkdir("lockbkt")
    real, created = gcsfs.GCSFileSystem._call, []

    async def call(self, method, path, *args, **kwargs):
        if kwargs.get("ifGenerationMatch") == "0":
            name = unquote(path.split("name=", 1)[1])
            if name in created:
                raise FileExistsError(path)  # as Cloud Storage answers: 412
            created.append(name)
        return await real(self, method, path, *args, **kwargs)

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", call)
    with OutputLock("gs://lockbkt/out", "r1"):
        assert created == ["out/_lock"]
        with pytest.raises(OutputBusy, match="run r1"):
            OutputLock("gs://lockbkt/out", "r2").acquire()


def test_a_lock_being_written_this_instant_is_not_taken_for_a_dead_one(tmp_path):
    import threading

    path = tmp_path / "out" / LOCK
    path.parent.mkdir(parents=True)
    path.write_text("")  # created, its bytes not written yet
    threading.Timer(0.1, write_lock, (path,), {"run_id": "live"}).start()
    with pytest.raises(OutputBusy, match="run live"):
        OutputLock(str(tmp_path / "out"), "new").acquire()


def test_the_same_run_re_enters_its_lock_and_only_its_first_holder_releases_it(tmp_path):
    out = str(tmp_path / "out")
    with OutputLock(out, "r1"):
        with OutputLock(out, "r1"):  # the run's commit, in a worker of the same run
            pass
        assert json.loads((tmp_path / "out" / "_lock").read_text())["run_id"] == "r1"
        with pytest.raises(OutputBusy):
            OutputLock(out, "r2").check_free()
    assert not (tmp_path / "out" / "_lock").exists()
    OutputLock(out, "r2").check_free()


def test_a_holder_whose_lock_was_taken_over_knows_it(tmp_path):
    import time

    out = str(tmp_path / "out")
    lock = OutputLock(out, "r1", lease_s=0.4)
    lock.acquire()
    write_lock(tmp_path / "out" / "_lock", run_id="r2", host="elsewhere", pid=1,
               expires=time.time() + 60)
    time.sleep(0.3)
    lock.release()
    assert lock.lost
    assert json.loads((tmp_path / "out" / "_lock").read_text())["run_id"] == "r2"


@pytest.mark.parametrize("content", ['[]', '{"expires": 1e300}', '{"expires": "soon"}',
                                     '{"run_id": "x", "host": "h", "pid": "abc", "expires": 1}'])
def test_a_lock_file_that_is_no_lock_record_is_taken_over(tmp_path, content):
    path = tmp_path / "out" / LOCK
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with OutputLock(str(tmp_path / "out"), "r1"):
        assert json.loads(path.read_text())["run_id"] == "r1"


def test_a_live_lease_of_another_host_is_kept_where_its_pid_is_no_process_here(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True)
    write_lock(tmp_path / "out" / LOCK, host="elsewhere", pid=int(child.stdout))
    with pytest.raises(OutputBusy, match="host elsewhere"):
        OutputLock(str(tmp_path / "out"), "new").acquire()


def test_a_renewal_that_fails_is_tried_again_and_the_lease_kept(tmp_path, monkeypatch):
    from transforms.io import lock as lock_module

    real, faults = lock_module.atomic_output, []

    def flaky(fs, path):
        if len(faults) < 2:  # the store fails the first two renewals
            faults.append(path)
            raise ConnectionResetError("the store reset the connection")
        return real(fs, path)

    monkeypatch.setattr(lock_module, "atomic_output", flaky)
    out = str(tmp_path / "out")
    with OutputLock(out, "r1", lease_s=0.8) as held:
        time.sleep(1.6)  # two leases: renewed after the faults
        assert len(faults) == 2 and held._thread.is_alive() and not held.lost
        assert json.loads((tmp_path / "out" / LOCK).read_text())["expires"] > time.time()
        with pytest.raises(OutputBusy, match="run r1"):
            OutputLock(out, "r2").acquire()


def test_a_holder_whose_lock_file_vanished_takes_it_again_and_is_not_told_run_none(
        tmp_path, caplog):
    out = str(tmp_path / "out")
    with OutputLock(out, "r1", lease_s=0.4) as held:
        (tmp_path / "out" / LOCK).unlink()
        time.sleep(1.0)
        assert not held.lost and json.loads((tmp_path / "out" / LOCK).read_text())[
            "run_id"] == "r1"
    assert "None" not in caplog.text
