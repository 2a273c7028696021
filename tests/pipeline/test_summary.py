"""What a run records besides its outputs: the model fingerprints its markers depend on."""

import os

from pipeline.summary import model_version
from transforms.io import storage


def test_any_byte_of_a_model_changes_its_fingerprint_and_a_rerun_reads_none(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(300_000))
    (model / "config.json").write_text("{}")
    before = model_version(str(model))
    stat = weights.stat()
    with weights.open("r+b") as f:  # a retrained head: same size, bytes past the first 64 KiB
        f.seek(250_000)
        f.write(b"\x01")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its time kept
    after = model_version(str(model))
    assert after["fingerprint"] != before["fingerprint"] and after["bytes"] == before["bytes"]
    writes = []
    monkeypatch.setattr(storage, "write_atomically", lambda *a: writes.append(a))
    assert model_version(str(model)) == after and writes == []  # from the digest cache


def test_the_metrics_table_has_a_header_for_each_part():
    from pipeline.summary import RunMetrics, metrics_table

    text = metrics_table(RunMetrics({"documents/read": 1200}, {"documents/chars": {
        "count": 2, "mean": 1.5, "min": 1, "max": 2, "sum": 3}})).splitlines()
    assert text[0].split() == ["counter", "value"] and text[1].split() == ["documents/read",
                                                                           "1,200"]
    assert text[2].split() == ["distribution", "count", "mean", "min", "max"]
