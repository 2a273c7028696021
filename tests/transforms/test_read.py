import gzip
import json

import fsspec
import fsspec.implementations.memory
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import E3C, SPACCC, read_text
from transforms.read import (Fields, ReadTask, plan_reads, read_jsonl, read_parquet, read_task,
                             read_txt, split_task)
from transforms.io.shards import list_files


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """An uncompressed JSONL shard of 300 real E3C notes, plus a few bad lines."""
    path = tmp_path_factory.mktemp("jsonl") / "es.jsonl"
    with gzip.open(E3C / "es.jsonl.gz", "rb") as src:
        lines = [next(src) for _ in range(300)]
    lines.insert(7, b"{broken\n")
    lines.insert(50, b'{"id": "bad-utf8", "text": "\xff\xfe"}\n')
    lines.insert(90, b"\n")
    path.write_bytes(b"".join(lines))
    return path


def keys(docs):
    return [(d.doc_id, d.text, d.status) for d in docs]


@pytest.mark.parametrize("split", [97, 1000, 4096, 50_000])
def test_byte_ranges_read_every_line_once(shard, split):
    whole = keys(read_jsonl(ReadTask((str(shard),), "jsonl"), Fields()))
    (planned,) = plan_reads(list_files(str(shard)))
    tasks = list(split_task(planned, split_bytes=split))
    assert len(tasks) > 1
    pieces = [d for t in tasks for d in keys(read_jsonl(t, Fields()))]
    assert pieces == whole
    assert len(whole) == 302  # 300 notes + 2 bad lines; the blank line is no record
    failed = [d for d in whole if d[2] == "failed"]
    assert len(failed) == 2
    docs = list(read_jsonl(ReadTask((str(shard),), "jsonl"), Fields()))
    offsets = [d.position for d in docs]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert all(d.key == f"{shard}@{d.position}" for d in docs)


def test_bad_records_are_failed_with_the_reason(shard):
    docs = list(read_jsonl(ReadTask((str(shard),), "jsonl"), Fields()))
    reasons = sorted(d.reason for d in docs if d.status)
    assert reasons == ["read: invalid UTF-8 at byte 28", "read: not JSON (Expecting property "
                       "name enclosed in double quotes at column 2)"]


def test_records_no_file_can_hold_are_failed_naming_the_field_not_its_value(tmp_path):
    path = tmp_path / "r.jsonl"
    deep = '{"id": "deep", "text": "x", "m": ' + "[" * 5000 + "]" * 5000 + "}"
    lines = ['{"id": "s1\\udc80", "text": "ok"}', '{"id": "s2", "text": "Fiebre \\ud800 alta"}',
             '{"id": "s3", "text": "ok", "meta": {"k": ["\\uDFFF"]}}',
             '{"id": "pair", "text": "ok \\ud83d\\ude00"}', deep]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = list(read_jsonl(ReadTask((str(path),), "jsonl"), Fields()))
    reasons = [d.reason for d in docs]
    lone = "holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF)"
    assert reasons == [f"read: `id` {lone}", f"read: `text` {lone}", f"read: `meta` {lone}", "",
                       "read: JSON nested too deep"]
    assert docs[3].text == "ok \U0001F600" and docs[3].status == ""
    assert all(d.text is None and "\udc80" not in d.doc_id for d in docs if d.status)


def test_ids_are_strings_or_integers_and_a_backslash_is_part_of_a_name(tmp_path):
    from transforms.read import doc_id_of, record_document

    assert doc_id_of("in/ward1\\note.txt") == "ward1\\note"  # not "note", twice
    got = {repr(i): record_document({"id": i, "text": "x"}, "k", "f@0", "p", Fields())
           for i in (7, "a-1", 2.5, float("nan"), True, [1])}
    assert {k: d.doc_id for k, d in got.items() if not d.status} == {"7": "7", "'a-1'": "a-1"}
    assert {d.reason for d in got.values() if d.status} == {
        "read: `id` is not a string or an integer"}


def test_an_empty_compressed_file_is_a_failed_record_not_a_quiet_nothing(tmp_path):
    for name in ("e.jsonl.gz", "e.jsonl.zst"):
        (tmp_path / name).write_bytes(b"")
        (doc,) = read_task(next(plan_reads(list_files(str(tmp_path / name)))), Fields())
        assert (doc.status, doc.reason) == ("failed", "read: empty compressed file (0 bytes)")
    (tmp_path / "e.jsonl").write_bytes(b"")  # an empty plain file: no records, nothing wrong
    assert list(read_task(next(plan_reads(list_files(str(tmp_path / "e.jsonl")))), Fields())) == []


def test_a_file_or_folder_that_cannot_be_read_is_never_skipped_quietly(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    from transforms.io.shards import InputError

    (tmp_path / "ward" / "locked").mkdir(parents=True)
    (tmp_path / "ward" / "a.txt").write_text("Fiebre.")
    (tmp_path / "ward" / "b.jsonl").write_text('{"id": "b", "text": "Tos."}\n')
    real_ls, real_open = LocalFileSystem.ls, LocalFileSystem._open

    def ls(self, path, *args, **kwargs):
        if path.endswith("locked"):  # as root here, chmod would not stop this process
            raise PermissionError(13, "Permission denied", path)
        return real_ls(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", ls)
    with pytest.raises(InputError, match="cannot list .*locked.* \\(PermissionError\\)"):
        list(list_files(str(tmp_path / "ward")))
    monkeypatch.setattr(LocalFileSystem, "ls", real_ls)
    (tmp_path / "ward" / "locked").rmdir()

    def refuse(self, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "_open", refuse)
    monkeypatch.setattr(LocalFileSystem, "cat_file", refuse)
    docs = [d for t in plan_reads(list_files(str(tmp_path / "ward")))
            for d in read_task(t, Fields())]
    assert sorted((d.doc_id, d.status, d.reason) for d in docs) == [
        ("a", "failed", "read: not readable (PermissionError)"),
        ("b.jsonl", "failed", "read: not readable (PermissionError)")]
    monkeypatch.setattr(LocalFileSystem, "_open", real_open)


def test_fields_and_meta(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"note_id": 7, "body": "Fiebre.", "language": "it",
                                "ward": "cardio"}) + "\n")
    (doc,) = read_jsonl(ReadTask((str(path),), "jsonl"), Fields(id="note_id", text="body"))
    assert (doc.doc_id, doc.text, doc.lang, json.loads(doc.meta)) == (
        "7", "Fiebre.", "it", {"ward": "cardio"})


def test_parquet_by_row_group(tmp_path):
    rows = [{"id": f"d{i}", "text": f"texto {i}", "lang": "es"} for i in range(2500)]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    tasks = [t for planned in plan_reads(list_files(str(path))) for t in split_task(planned)]
    assert [t.row_groups for t in tasks] == [(0,), (1,), (2,)]
    docs = [d for t in tasks for d in read_parquet(t, Fields())]
    assert [d.doc_id for d in docs] == [r["id"] for r in rows]
    assert len({d.key for d in docs}) == 2500


def test_txt_exactly_as_stored(tmp_path):
    src = sorted((SPACCC / "txt").glob("*.txt"))[0]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xc3\x28")
    good, failed = read_txt(ReadTask((str(src), str(bad)), "txt"))
    assert good.text == read_text(src) and good.doc_id == src.stem
    assert failed.status == "failed" and failed.reason == "read: invalid UTF-8 at byte 3"


def test_truncated_or_mislabelled_shards_fail_without_stopping(tmp_path, shard):
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(shard.read_bytes())[:5000])
    docs = list(read_task(ReadTask((str(truncated),), "jsonl"), Fields()))
    assert docs and docs[-1].status == "failed" and "unreadable" in docs[-1].reason
    fake = tmp_path / "f.jsonl.gz"
    fake.write_bytes(shard.read_bytes())  # not gzip at all
    (doc,) = read_task(ReadTask((str(fake),), "jsonl"), Fields())
    assert doc.status == "failed" and "BadGzipFile" in doc.reason


def test_a_damaged_parquet_file_is_one_failed_record(tmp_path):
    rows = [{"id": f"d{i}", "text": "x" * 50} for i in range(3000)]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    data = path.read_bytes()
    path.write_bytes(data[:4] + b"\xff" * 3000 + data[3004:])
    docs = [d for t in split_task(ReadTask((str(path),), "parquet")) for d in read_task(t, Fields())]
    failed = [d for d in docs if d.status == "failed"]
    assert len(failed) == 1 and "shard unreadable from here on" in failed[0].reason
    assert len(docs) == 2001  # the other two row groups are read


class Flaky(fsspec.implementations.memory.MemoryFileSystem):
    """A store whose first reads fail with a network error, then work."""

    protocol = "flaky"
    failures = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("flaky://"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        if Flaky.failures:
            Flaky.failures -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().cat_file(path, start, end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if Flaky.failures:
            Flaky.failures -= 1
            raise TimeoutError("read timed out")
        return super()._open(path, mode, **kwargs)


@pytest.fixture()
def flaky():
    fsspec.register_implementation("flaky", Flaky, clobber=True)
    fs = fsspec.filesystem("flaky")
    fs.pipe("/in/a.txt", "Dolor torácico.".encode())
    fs.pipe("/in/b.jsonl", b'{"id": "x", "text": "Fiebre."}\n')
    yield fs
    fs.rm("/in", recursive=True)
    Flaky.failures = 0


@pytest.mark.parametrize("task", [ReadTask(("flaky:///in/a.txt",), "txt"),
                                  ReadTask(("flaky:///in/b.jsonl",), "jsonl")])
def test_a_storage_error_is_raised_for_the_runner_to_retry(flaky, task):
    Flaky.failures = 1
    with pytest.raises((ConnectionResetError, TimeoutError)):
        list(read_task(task, Fields()))
    (doc,) = read_task(task, Fields())  # the retry reads it whole
    assert doc.status == "" and doc.text in ("Dolor torácico.", "Fiebre.")


def test_a_file_gone_since_it_was_listed_is_a_failed_document(flaky):
    (doc,) = read_task(ReadTask(("flaky:///in/gone.txt",), "txt"), Fields())
    assert doc.status == "failed" and "FileNotFoundError" in doc.reason


