"""A conversion made once for every machine: published whole, copied and checked, a damaged
or partial entry never loaded; two machines racing build it once."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from transforms.io.shared_cache import MANIFEST, CacheUnavailable, ensure, is_whole


def builder(log: list):
    def build(folder: Path) -> None:
        log.append(folder)
        (folder / "encoder.xml").write_text("<net/>")
        (folder / "encoder.bin").write_bytes(os.urandom(4096))
    return build


def test_one_machine_converts_the_others_copy_and_a_damaged_entry_is_made_again(tmp_path):
    shared, built = str(tmp_path / "shared" / "key"), []
    assert ensure(tmp_path / "a" / "key", builder(built), shared) == "converted"
    assert json.loads((tmp_path / "shared" / "key" / MANIFEST).read_text())
    assert ensure(tmp_path / "b" / "key", builder(built), shared) == "downloaded"
    assert len(built) == 1
    same = [(tmp_path / m / "key" / "encoder.bin").read_bytes() for m in "ab"]
    assert same[0] == same[1]
    assert ensure(tmp_path / "b" / "key", builder(built), shared) == "cached"
    # a flipped byte in the shared copy: detected, never loaded, made again and replaced
    blob = tmp_path / "shared" / "key" / "encoder.bin"
    data = bytearray(blob.read_bytes())
    data[7] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert ensure(tmp_path / "c" / "key", builder(built), shared) == "converted"
    assert len(built) == 2 and is_whole(tmp_path / "c" / "key", hashes=True)
    assert ensure(tmp_path / "d" / "key", builder(built), shared) == "downloaded"
    assert not (tmp_path / "shared" / "key" / "_lock").exists()


def test_a_partial_entry_is_never_loaded(tmp_path):
    built = []
    shared = tmp_path / "shared" / "key"
    shared.mkdir(parents=True)
    (shared / "encoder.xml").write_text("<net/>")  # a publisher that died before its manifest
    assert ensure(tmp_path / "a" / "key", builder(built), str(shared)) == "converted"
    assert (shared / MANIFEST).exists() and len(built) == 1
    local = tmp_path / "a" / "key"  # a local entry cut short: made again, not loaded
    with open(local / "encoder.bin", "r+b") as f:
        f.truncate(10)
    assert not is_whole(local)
    assert ensure(local, builder(built), str(shared)) == "downloaded"
    assert is_whole(local, hashes=True)


RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from transforms.io.shared_cache import ensure

    def build(folder):
        time.sleep(2)  # a conversion takes a while: the other machine must wait for it
        (folder / "encoder.bin").write_bytes(str(os.getpid()).encode())

    print(ensure(Path(sys.argv[1]), build, sys.argv[2]))
""")


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["s3", "local"])
def test_two_machines_racing_convert_once(store, tmp_path, request):
    if store == "s3":  # moto enforces S3's create-only write, as S3 does
        import s3fs

        request.getfixturevalue("s3_server")
        s3fs.S3FileSystem().mkdir("cachebkt")
        shared = f"s3://cachebkt/{tmp_path.name}/openvino/key"
    else:
        shared = str(tmp_path / "shared" / "openvino" / "key")
    machines = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / m / "key"), shared],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True, env=os.environ)
                for m in "ab"]
    hows = sorted(p.communicate(timeout=120)[0].strip() for p in machines)
    assert hows == ["converted", "downloaded"]
    blobs = {(tmp_path / m / "key" / "encoder.bin").read_bytes() for m in "ab"}
    assert len(blobs) == 1  # the same conversion on both machines


@pytest.mark.e2e
def test_the_cache_on_cloud_storage(gcs_emulator, tmp_path):
    import gcsfs

    gcsfs.GCSFileSystem().mkdir("cache-bkt")
    shared, built = "gs://cache-bkt/openvino/key", []
    assert ensure(tmp_path / "a" / "key", builder(built), shared) == "converted"
    assert ensure(tmp_path / "b" / "key", builder(built), shared) == "downloaded"
    assert len(built) == 1 and is_whole(tmp_path / "b" / "key", hashes=True)


def test_a_local_entry_with_a_flipped_byte_of_the_same_size_is_made_again(tmp_path):
    built = []
    local = tmp_path / "a" / "key"
    ensure(local, builder(built))
    blob = local / "encoder.bin"
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert ensure(local, builder(built)) == "converted" and len(built) == 2


def test_a_manifest_naming_files_outside_its_entry_is_refused(tmp_path):
    import hashlib

    shared, built = tmp_path / "bucket" / "cache" / "key", []
    ensure(tmp_path / "a" / "key", builder(built), str(shared))
    planted = tmp_path / "planted.py"  # what a writer of the bucket wants on every worker
    planted.write_text("print('owned')")
    files = json.loads((shared / MANIFEST).read_text())
    files["../../../planted.py"] = {"size": planted.stat().st_size,
                                    "sha256": hashlib.sha256(planted.read_bytes()).hexdigest()}
    (shared / MANIFEST).write_text(json.dumps(files))
    assert ensure(tmp_path / "b" / "key", builder(built), str(shared)) == "converted"
    assert not (tmp_path.parent / "planted.py").exists()  # where it would have landed
    for i, bad in enumerate(("{}", "[]")):  # valid JSON, no manifest: made again, not loaded
        (shared / MANIFEST).write_text(bad)
        assert ensure(tmp_path / f"c{i}" / "key", builder(built), str(shared)) == "converted"


def test_a_shared_location_that_cannot_be_used_is_a_fault_of_the_storage(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheUnavailable, match="model cache"):
        ensure(tmp_path / "a" / "key", builder([]), str(blocker / "sub"))


def test_the_build_folder_of_a_process_killed_while_building_is_removed_by_the_next(tmp_path):
    import signal
    import time

    entry = tmp_path / "cache" / "key"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from transforms.io.shared_cache import ensure

        def build(folder):
            (folder / "encoder.bin").write_bytes(b"x" * 4096)
            time.sleep(600)  # killed here, mid-conversion

        ensure(Path({str(entry)!r}), build)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.time() + 60
    while not list(entry.parent.glob(".key.build-*/encoder.bin")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in entry.parent.glob(".key.*")] == [f".key.build-{proc.pid}"]
    assert ensure(entry, builder([])) == "converted"
    assert [p.name for p in entry.parent.iterdir()] == ["key"]
