"""Filesystem helpers shared by the readers, the sinks and the run record (any fsspec URL)."""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import fsspec


def modified_time(info: dict) -> datetime | None:
    """A listed file's last change, UTC (local files: mtime; GCS: updated; S3: LastModified)."""
    value = info.get("mtime") or info.get("updated") or info.get("LastModified")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is the local disk."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def open_output(url: str, mode: str):
    """Open ``url`` for writing on its filesystem, creating parent directories as needed."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, mode)


def move(fs, src: str, dst: str) -> None:
    """Rename on local disks; on object stores a server-side copy (the destination object
    appears whole or not at all) and a delete."""
    fs.makedirs(posixpath.dirname(dst), exist_ok=True)
    if is_local(fs):
        fs.mv(src, dst)
    else:
        fs.copy(src, dst)
        fs.rm(src)


def in_progress(path: str) -> str:
    """Where ``path`` is written before it is moved into place: a hidden name beside it, which
    Parquet and CSV readers of the folder skip (pyarrow ignores names starting with '.'), so a
    write cut off by a kill is never read as data."""
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.inprogress")


@contextmanager
def atomic_output(fs, path: str) -> Iterator:
    """A file to write ``path`` through: written aside, moved into place when the block ends
    without error, so readers never see a partial file."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(in_progress(path), "wb") as f:
        yield f
    move(fs, in_progress(path), path)


def create_only(fs, path: str, data: bytes) -> None:
    """Create ``path`` holding ``data`` only where no file is there, in one step that the store
    decides (``FileExistsError`` where one is): on a local disk a file written aside and
    hard-linked into place (never seen half written), on Cloud Storage an upload with
    ``ifGenerationMatch=0``, on S3 one with ``If-None-Match: *``."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if not is_local(fs):
        with fs.open(path, "xb") as f:
            f.write(data)
        return
    aside = f"{in_progress(path)}-{os.getpid()}-{threading.get_ident()}"
    with open(aside, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(aside, path)
    finally:
        os.unlink(aside)


def read_table(fs, path: str):
    """One Parquet file on ``fs`` as a pyarrow Table."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def write_table(fs, path: str, table) -> None:
    """Write a Parquet file on ``fs`` atomically."""
    import pyarrow.parquet as pq

    with atomic_output(fs, path) as f:
        pq.write_table(table, f)


def write_atomically(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` (any fsspec URL, parent folders created) atomically."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with atomic_output(fs, path) as f:
        f.write(data)


ROWS_PER_GROUP = 50_000


class ParquetSink:
    """Rows appended to one Parquet file (and, with ``csv``, the same rows to a CSV file with
    a header) in row groups of bounded size."""

    def __init__(self, path: str, schema, csv: str | None = None) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        self._files = [open_output(path, "wb")]
        self._writers = [pq.ParquetWriter(self._files[0], schema)]
        if csv:
            self._files.append(open_output(csv, "wb"))
            self._writers.append(pacsv.CSVWriter(self._files[1], schema))
        self._schema = schema
        self._rows: list = []
        self.count = 0

    def write(self, rows) -> tuple[int, int]:
        """Append ``rows``; their row numbers in the file."""
        first = self.count
        self._rows.extend(rows)
        self.count += len(rows)
        if len(self._rows) >= ROWS_PER_GROUP:
            self._flush()
        return first, self.count

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            table = pa.Table.from_pylist(self._rows, self._schema)
            for writer in self._writers:
                writer.write_table(table)
            self._rows = []

    def close(self) -> None:
        self._flush()
        for writer, f in zip(self._writers, self._files):
            writer.close()
            f.close()


CACHE_ENV = "CLINICAL_NER_CACHE"


def cache_root() -> Path:
    """The machine's cache of models, conversions and file digests (``$CLINICAL_NER_CACHE``,
    default ``~/.cache/clinical-ner``)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "clinical-ner"))


_HASHING: dict[str, threading.Lock] = {}
_HASHING_GUARD = threading.Lock()


def file_digest(path: Path) -> str:
    """The SHA-256 of a local file's bytes, cached by the file's identity (path, size, inode,
    modification time): a model's fingerprint changes with any byte of it, and a rerun on an
    unchanged model reads none of it (an edit in place changes its status time). Threads
    asking for the same file wait for one reading."""
    st = path.stat()
    identity = f"{path.resolve()}:{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    cached = cache_root() / "digests" / key
    with _HASHING_GUARD:
        lock = _HASHING.setdefault(key, threading.Lock())
    with lock:
        if cached.exists():
            return cached.read_text()
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        write_atomically(str(cached), digest.hexdigest().encode())
    return digest.hexdigest()


# The keys of fsspec file infos that identify a version, most specific first: GCS checksums,
# S3/HTTP ETags, modification times (local disks and others).
_VERSION_KEYS = ("md5Hash", "crc32c", "ETag", "etag", "generation", "mtime", "LastModified",
                 "updated", "created")


def file_version(info: Mapping[str, Any]) -> str:
    """What identifies a file's content on its store, from an fsspec info dict."""
    for key in _VERSION_KEYS:
        if info.get(key) not in (None, ""):
            return f"{key}={info[key]}"
    return ""


def store_version(fs, root: str) -> tuple[str, int]:
    """What identifies the current version of a file or folder on its store (each file's name
    under ``root``, size and ``file_version``: no byte read), and its bytes."""
    infos = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
    return ("".join(f"{posixpath.relpath(name, root)}:{info.get('size')}:{file_version(info)}\n"
                    for name, info in sorted(infos.items())),
            sum(int(info.get("size") or 0) for info in infos.values()))


def tree_digest(path: Path) -> tuple[str, int]:
    """The SHA-1 of a local file's or folder's files (each named from ``path``'s parent, with
    its bytes' ``file_digest``), and their bytes."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.relative_to(path.parent)}:{file_digest(f)}\n".encode())
    return digest.hexdigest(), sum(f.stat().st_size for f in files)


def localize(location: str) -> str:
    """A local path for a model file or directory on a remote fsspec filesystem (gs://, s3://).

    Each worker copies each version of it once into a local cache (``$CLINICAL_NER_CACHE``,
    default ``~/.cache/clinical-ner``), under a lock, and reuses it while the store's checksums
    of its files are unchanged (a model rewritten in place is copied again). Local paths, hub
    ids and ``hf://`` locations are returned unchanged.
    """
    if "://" not in location or location.startswith(("hf://", "file://")):
        return location.removeprefix("file://")
    from filelock import FileLock

    fs, path = fsspec.core.url_to_fs(location)
    if not fs.exists(path):
        raise FileNotFoundError(f"{location!r} does not exist")
    key = hashlib.sha1(f"{location}\n{store_version(fs, path)[0]}".encode()).hexdigest()[:16]
    dest = cache_root() / key / Path(location.rstrip("/")).name
    done = dest.parent / ".complete"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / ".lock")):
        if not done.exists():
            partial = dest.parent / "partial"
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(partial), recursive=True)
            else:
                fs.get(path, str(partial))
            partial.rename(dest)
            done.touch()
    return str(dest)


def iter_parquet_dir(url: str, columns: list[str] | None = None) -> Iterator:
    """Each ``*.parquet`` file of a directory (any fsspec URL) as a pyarrow Table, read through
    fsspec file by file (pyarrow's own dataset reader can stall on some object stores); of
    ``columns``, those the file has (files written by an earlier version may lack new ones)."""
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(url)
    for part in sorted(fs.glob(posixpath.join(root, "*.parquet"))):
        with fs.open(part, "rb") as f:
            if columns is None:
                yield pq.read_table(f)
                continue
            names = set(pq.ParquetFile(f).schema_arrow.names)
            yield pq.read_table(f, columns=[c for c in columns if c in names])


def read_parquet_dir(url: str, columns: list[str] | None = None):
    """All ``*.parquet`` files of a directory as one pyarrow Table."""
    import pyarrow as pa

    tables = list(iter_parquet_dir(url, columns))
    if not tables:
        raise FileNotFoundError(f"{url}: no Parquet files")
    return pa.concat_tables(tables, promote_options="default")
