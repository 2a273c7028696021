"""Writing through fsspec: whole files or none; remote models copied once per version."""

from pathlib import Path

import fsspec
import pytest

from transforms.io.storage import atomic_output, localize, move, write_atomically


def test_atomic_output_leaves_nothing_when_writing_fails(tmp_path):
    fs = fsspec.filesystem("file")
    target = tmp_path / "deep" / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(fs, str(target)) as f:
            f.write(b"half")
            raise RuntimeError("lost the worker")
    assert not target.exists()
    write_atomically(str(target), b"whole")
    assert target.read_bytes() == b"whole"


def test_move_creates_the_destination_folder_on_any_store(tmp_path):
    for fs, root in ((fsspec.filesystem("file"), str(tmp_path)),
                     (fsspec.filesystem("memory"), "/mv")):
        fs.pipe(f"{root}/a", b"x")
        move(fs, f"{root}/a", f"{root}/new/dir/b")
        assert fs.cat(f"{root}/new/dir/b") == b"x" and not fs.exists(f"{root}/a")


def test_a_remote_model_is_copied_once_per_version(tmp_path, monkeypatch):
    """A worker's copy of a remote model is reused while the store says the files are
    unchanged, and copied again when one is rewritten in place (never a stale model run under
    the new one's fingerprint)."""
    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path))
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/model/config.json", b'{"v": 1}')
    fs.pipe("/bucket/model/weights.bin", b"old")
    first = Path(localize("memory://bucket/model"))
    assert (first / "weights.bin").read_bytes() == b"old"
    assert localize("memory://bucket/model") == str(first)  # not copied again
    fs.pipe("/bucket/model/weights.bin", b"new")
    second = Path(localize("memory://bucket/model"))
    assert second != first and (second / "weights.bin").read_bytes() == b"new"
    assert Path(localize("memory://bucket/model/config.json")).read_bytes() == b'{"v": 1}'
    with pytest.raises(FileNotFoundError, match="does not exist"):
        localize("memory://bucket/missing")


def test_threads_asking_for_one_files_digest_read_it_once(tmp_path, monkeypatch):
    import hashlib
    import threading

    from transforms.io import storage

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 40_000)
    reads, real = [], Path.open

    def counted(self, mode="r", *args, **kwargs):
        if self == weights:
            reads.append(mode)
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counted)
    got = []
    threads = [threading.Thread(target=lambda: got.append(storage.file_digest(weights)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [hashlib.sha256(weights.read_bytes()).hexdigest()] * 4
    assert reads.count("rb") == 2  # one digest, then the check above
