import json

from transforms.records import Shard
from transforms.shards import Resume, existing_markers, file_version, pending, write_marker

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
    assert pending([a, b], resume) == [a, b]
    write_marker(a, {"documents": 1}, resume, "run1", "now")
    assert pending([a, b], resume) == [b]
    assert [s.url for s in pending([a, b], Resume(str(tmp_path), CONFIG, force=True))] == \
        [a.url, b.url]
    changed = a.with_(version="mtime=2")
    (todo,) = pending([changed], resume)
    assert todo.stale == (resume.marker(a),)  # its old marker, to replace
    write_marker(todo, {"documents": 1}, resume, "run2", "now")
    assert sum(existing_markers(resume.root).values(), []) == [resume.marker(changed)]
    record = json.loads((tmp_path / "_shards" / resume.marker(changed)).read_text())
    assert record["source"] == a.url and record["run_id"] == "run2"
    assert record["config"] == CONFIG and record["counts"] == {"documents": 1}
