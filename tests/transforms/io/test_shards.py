"""Listing input shards, and which ones an earlier run over the same output completed."""

import gzip
import json

import pytest

from transforms.core.records import Shard
from transforms.io.shards import (InputError, Resume, bucket_markers, file_version, list_files,
                                  pending, read_marker, write_marker)

CONFIG = {"tasks": {"symptom": {"model": {"fingerprint": "abc"}}}, "options": {"max_tokens": 512}}


def test_file_version_prefers_store_checksums():
    assert file_version({"md5Hash": "x==", "mtime": 5}) == "md5Hash=x=="
    assert file_version({"ETag": '"e"', "LastModified": 1}) == 'ETag="e"'
    assert file_version({"mtime": 1.5}) == "mtime=1.5"
    assert file_version({"size": 3}) == ""


def test_marker_changes_with_file_and_configuration():
    resume = Resume("out", CONFIG)
    shard = Shard("gs://b/x.jsonl", 10, "md5Hash=a")
    name = resume.marker(shard)
    bucket, file = name.split("/")
    assert len(bucket) == 2 and file.startswith(bucket) and file.count(".") == 2
    assert name == Resume("out", json.loads(json.dumps(CONFIG))).marker(shard)  # stable
    assert resume.marker(shard.with_(size=11)) != name
    assert resume.marker(shard.with_(version="md5Hash=b")) != name
    other = Resume("out", {**CONFIG, "options": {"max_tokens": 256}})
    assert other.marker(shard) != name
    # same file: same id before the dot, so a new state replaces the old marker
    assert other.marker(shard).split(".")[0] == name.split(".")[0]
    assert resume.marker(Shard("gs://b/y.jsonl", 10, "md5Hash=a")).split(".")[0] != \
        name.split(".")[0]


def test_pending_skips_marked_shards_unless_forced(tmp_path):
    resume = Resume(str(tmp_path), CONFIG)
    a, b = Shard(str(tmp_path / "a.txt"), 3, "mtime=1"), Shard(str(tmp_path / "b.txt"), 4, "mtime=1")
    assert list(pending([a, b], resume)) == [a, b]
    write_marker(a, {"documents": 1, "annotated": 1}, ["r1-p1"], resume, "run1", "now")
    assert list(pending([a, b], resume)) == [b]
    forced = list(pending([a, b], Resume(str(tmp_path), CONFIG, force=True)))
    assert [s.url for s in forced] == [a.url, b.url]
    assert forced[0].stale == (resume.marker(a),)  # forced: its marker is replaced too
    changed = a.with_(version="mtime=2")
    (todo,) = pending([changed], resume)
    assert todo.stale == (resume.marker(a),)  # its old marker, to replace
    write_marker(todo, {"documents": 1}, ["r2-p7"], resume, "run2", "now")
    bucket = resume.bucket(a)
    markers, indexed = bucket_markers(resume, bucket)
    assert sum(markers.values(), []) == [resume.marker(changed)]
    assert indexed == {resume.marker(a).split("/")[1].split(".")[0]}
    (again,) = pending([changed.with_(stale=())], Resume(str(tmp_path), CONFIG, force=True))
    assert again.earlier == ("r2-p7",)  # from the shard's index
    record = read_marker(resume, resume.marker(changed))
    assert record["source"] == a.url and record["run_id"] == "run2"
    assert record["parts"] == ["r2-p7"] and record["config"] == CONFIG
    assert record["counts"] == {"documents": 1, "annotated": 0, "skipped": 0, "failed": 0,
                                "spans": 0}
    assert read_marker(resume, resume.marker(a)) == {}


def test_listing(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    (tmp_path / "sub" / "deeper" / "c.parquet").write_bytes(b"")
    (tmp_path / "notes.csv").write_text("x")
    names = sorted(p.url.rsplit("/", 1)[-1] for p in list_files(str(tmp_path)))
    assert names == ["a.txt", "b.jsonl.gz", "c.parquet"]
    assert [p.url.rsplit("/", 1)[-1] for p in list_files(str(tmp_path / "*.txt"))] == ["a.txt"]
    assert list(list_files(str(tmp_path / "*.none"))) == []
    assert len(list(list_files(str(tmp_path / "notes.csv"), "txt"))) == 1
    with pytest.raises(InputError, match="unknown input format"):
        list(list_files(str(tmp_path / "notes.csv")))


def test_a_cdm_documents_text_file_is_part_of_its_shard(tmp_path):
    import os

    (tmp_path / "n1.json").write_text("{}")
    (tmp_path / "n1.txt").write_text("its text")
    (tmp_path / "n2.json").write_text("{}")
    (tmp_path / "n3.txt").write_text("a document of its own")

    def listed(pattern):
        return {p.url.rsplit("/", 1)[-1]: p for p in list_files(pattern)}

    shards = listed(str(tmp_path))
    assert sorted(shards) == ["n1.json", "n2.json", "n3.txt"]  # n1.txt is n1.json's text
    assert shards["n1.json"].size == 2 + len("its text")
    assert listed(str(tmp_path / "n1.json"))["n1.json"].version == shards["n1.json"].version
    os.utime(tmp_path / "n1.txt", ns=(1, 1))  # the text alone changes: the shard's version too
    after = listed(str(tmp_path))
    assert after["n1.json"].version != shards["n1.json"].version
    assert after["n2.json"].version == shards["n2.json"].version
    assert listed(str(tmp_path / "n1.json"))["n1.json"].version == after["n1.json"].version


def test_an_output_inside_an_input_folder_is_a_set_up_error(tmp_path):
    from transforms.io.shards import InputError, check_output_outside

    (tmp_path / "in").mkdir()
    with pytest.raises(InputError, match="is inside --input"):
        check_output_outside(str(tmp_path / "in"), str(tmp_path / "in" / "out"))
    with pytest.raises(InputError, match="is inside --input"):
        check_output_outside(str(tmp_path / "in"), str(tmp_path / "in" / "." / "out"))
    check_output_outside(str(tmp_path / "in"), str(tmp_path / "in-out"))  # a sibling: fine
    check_output_outside(str(tmp_path / "in" / "*.txt"), str(tmp_path / "out"))


def test_every_spelling_of_a_local_input_names_the_same_shards(tmp_path, monkeypatch):
    src = tmp_path / "in"
    (src / "ward").mkdir(parents=True)
    (src / "a.txt").write_text("x")
    (src / "ward" / "b.txt").write_text("y")
    (tmp_path / "link").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    want = sorted(s.url for s in list_files(str(src)))
    assert want == [f"{src}/a.txt", f"{src}/ward/b.txt"]
    for spelling in (f"{src}/", f"{tmp_path}//in", f"{src}/.", "in", "./in//", "link",
                     f"{tmp_path}/link/", f"{src}/ward/../"):
        assert sorted(s.url for s in list_files(spelling)) == want, spelling
    for spelling in ("in//a.txt", "link/a.txt", f"{src}/./a.txt"):
        assert [s.url for s in list_files(spelling)] == [f"{src}/a.txt"], spelling
    (tmp_path / "today.txt").symlink_to(src / "a.txt")  # a linked file keeps its own name
    assert [s.url for s in list_files("today.txt")] == [f"{tmp_path}/today.txt"]
