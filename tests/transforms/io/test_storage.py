"""Writing through fsspec: whole files or none."""

import fsspec
import pytest

from transforms.io.storage import atomic_output, move, write_atomically


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
