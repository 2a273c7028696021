"""A cache entry made once for every machine of a job: a model conversion, found by its content
key in a shared location (``gs://``, ``s3://`` or a folder every machine mounts).

An entry is a folder of files and a ``MANIFEST.json`` (each file's size and SHA-256) written
last: an entry without a manifest is partial, one whose files disagree with it is damaged;
neither is ever loaded. ``ensure`` gives a machine the entry in its local cache: kept there if
whole, else copied from the shared location and checked, else built here, by one machine
only, under a create-only lock in the shared location (``transforms.io.lock``), and published
for the others, who wait for it. A damaged shared entry is built again and replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import socket
from pathlib import Path
from typing import Callable

import fsspec

from transforms.io.lock import OutputLock
from transforms.io.storage import file_digest

MANIFEST = "MANIFEST.json"
WAIT_S = 1800.0  # how long a machine waits for another one's build of the same entry
LOG = logging.getLogger("pipeline")


class Damaged(RuntimeError):
    """A cache entry whose files disagree with its manifest."""


class CacheUnavailable(RuntimeError):
    """The shared location could not be read or written: a fault of the storage, raised so
    that the runner retries (falling back to another backend would mix them in one output)."""


def _checked(files: object, where: str) -> dict:
    """A manifest's entries: relative names inside the entry, each with its size and hash."""
    if not isinstance(files, dict) or not files:
        raise Damaged(f"{where}: the manifest lists no files")
    for name, want in files.items():
        parts = Path(str(name)).parts
        if (not isinstance(want, dict) or not isinstance(want.get("size"), int)
                or not isinstance(want.get("sha256"), str) or not parts
                or Path(str(name)).is_absolute() or ".." in parts):
            raise Damaged(f"{where}: the manifest's entry {str(name)[:80]!r} is not a file "
                          "of the entry")
    return files


def write_manifest(folder: Path, skip: tuple[str, ...] = ()) -> None:
    """Record every file of ``folder`` (but those under ``skip``) with its size and SHA-256."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
             and not str(p.relative_to(folder)).startswith(skip)}
    (folder / MANIFEST).write_text(json.dumps(files, indent=1))


def is_whole(folder: Path, hashes: bool = False) -> bool:
    """Whether a local entry has its manifest and every file in it at its size (and, with
    ``hashes``, its SHA-256: cached by file identity, so an unchanged entry is not read again,
    while any write to a file changes its identity)."""
    try:
        files = _checked(json.loads((folder / MANIFEST).read_text()), str(folder))
    except (OSError, ValueError, Damaged):
        return False
    for name, want in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want["size"]:
            return False
        if hashes and file_digest(path) != want["sha256"]:
            return False
    return True


def fetch(shared: str, local: Path) -> bool:
    """Copy the shared entry ``shared`` into ``local`` (whole or not at all); False where it
    has no manifest yet; ``Damaged`` where its files disagree with it."""
    fs, root = fsspec.core.url_to_fs(shared)
    try:
        files = _checked(json.loads(fs.cat_file(posixpath.join(root, MANIFEST))), shared)
    except FileNotFoundError:
        return False
    except ValueError as e:
        raise Damaged(f"{shared}: unreadable manifest") from e
    partial = local.parent / f".{local.name}.fetch-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for name in files:
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(posixpath.join(root, name), str(partial / name))
            except FileNotFoundError as e:
                raise Damaged(f"{shared}: {name} is missing") from e
        (partial / MANIFEST).write_text(json.dumps(files))
        if not is_whole(partial, hashes=True):
            raise Damaged(f"{shared}: a file disagrees with its manifest")
        shutil.rmtree(local, ignore_errors=True)
        partial.rename(local)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def publish(local: Path, shared: str) -> None:
    """Upload a whole local entry, its manifest last (the entry is complete from then on)."""
    fs, root = fsspec.core.url_to_fs(shared)
    files = json.loads((local / MANIFEST).read_text())
    for name in files:
        fs.makedirs(posixpath.dirname(posixpath.join(root, name)), exist_ok=True)
        fs.put_file(str(local / name), posixpath.join(root, name))
    fs.pipe_file(posixpath.join(root, MANIFEST), json.dumps(files).encode())


def _drop(shared: str) -> None:
    fs, root = fsspec.core.url_to_fs(shared)
    if fs.exists(posixpath.join(root, MANIFEST)):
        fs.rm(posixpath.join(root, MANIFEST))  # first: no reader takes it for whole meanwhile
    for path in fs.find(root):
        if posixpath.basename(path) != "_lock":
            fs.rm(path)


def find(local: Path, shared: str | None = None) -> str | None:
    """Make ``local`` a whole entry without building it; returns how (``cached``: it was;
    ``downloaded``: from ``shared``), or None where neither has it whole (``ensure`` builds
    it). The caller holds a lock among this machine's processes (so the build and fetch
    folders of this entry left beside it are of processes killed meanwhile: removed)."""
    for left in local.parent.glob(f".{local.name}.*-*"):
        if left.name.rpartition("-")[0] in (f".{local.name}.build", f".{local.name}.fetch"):
            shutil.rmtree(left, ignore_errors=True)
    if is_whole(local, hashes=True):  # a flipped byte of the same size too: never loaded
        return "cached"
    shutil.rmtree(local, ignore_errors=True)  # partial or damaged: never loaded
    if shared is None:
        return None
    try:
        return "downloaded" if fetch(shared, local) else None
    except Damaged as e:
        LOG.warning("model cache: %s: built again", e)
        return None
    except Exception as e:  # noqa: BLE001 - reading the shared location
        raise CacheUnavailable(f"model cache {shared}: {type(e).__name__}: {e}") from e


def ensure(local: Path, build: Callable[[Path], None], shared: str | None = None,
           wait_s: float = WAIT_S) -> str:
    """Make ``local`` a whole entry; returns how: ``cached`` (it was), ``downloaded`` (from
    ``shared``), ``converted`` (built here by ``build(folder)``, then published to
    ``shared``). The caller holds a lock among this machine's processes."""
    how = find(local, shared)
    if how:
        return how
    if shared is None:
        _build(local, build)
        return "converted"
    try:
        return _shared(local, build, shared, wait_s)
    except _BuildFailed as e:
        raise e.__cause__ from None  # the conversion failed: the caller keeps torch
    except Exception as e:  # noqa: BLE001 - reading, locking or writing the shared location
        raise CacheUnavailable(f"model cache {shared}: {type(e).__name__}: {e}") from e


def _shared(local: Path, build: Callable[[Path], None], shared: str, wait_s: float) -> str:
    """Build under the shared location's lock, unless another machine published the entry
    while this one waited for it."""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    with OutputLock(shared, owner, wait_s=wait_s):  # one machine builds, the others wait
        try:
            if fetch(shared, local):  # built by another machine while this one waited
                return "downloaded"
        except Damaged as e:
            LOG.warning("model cache: %s: built again", e)
        _drop(shared)
        try:
            _build(local, build)
        except Exception as e:  # noqa: BLE001 - the conversion's own failure, not the cache's
            raise _BuildFailed(e) from e
        publish(local, shared)
    return "converted"


class _BuildFailed(Exception):
    """The build failed: re-raised as its own error by ``ensure``."""


def _build(local: Path, build: Callable[[Path], None]) -> None:
    """``build`` into a partial folder, its manifest written, then renamed into place."""
    partial = local.parent / f".{local.name}.build-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        build(partial)
        write_manifest(partial)
        shutil.rmtree(local, ignore_errors=True)
        partial.rename(local)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
