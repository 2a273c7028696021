"""Object storage for real: the pipeline against a Google Cloud Storage API on localhost, and
every input format giving the same spans."""

import gzip
import io
import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.conftest import E3C, read_text, run_pipeline, spaccc_files

pytestmark = pytest.mark.e2e


@pytest.fixture()
def gcs(gcs_emulator):
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", project="test")
    fs.mkdir("bkt")
    yield fs
    fs.rm("bkt", recursive=True)


def test_gs_input_output_and_model(gcs, smoke_tasks, tmp_path):
    docs = spaccc_files(4)
    for f in docs:
        gcs.put(str(f), f"bkt/in/txt/{f.name}")
    with gzip.open(E3C / "es.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(3)]
    gcs.pipe("bkt/in/e3c.jsonl.gz", gzip.compress(
        "".join(json.dumps(r) + "\n" for r in records).encode()))
    gcs.put(str(smoke_tasks.parent / "stl_procedure"), "bkt/models/", recursive=True)
    gcs.pipe("bkt/models/tasks.yaml", b"tasks:\n  procedure:\n    kind: hf\n"
             b"    model: stl_procedure\n    languages: [es]\n")
    def annotate():
        run_pipeline("--input", "gs://bkt/in/", "--output", "gs://bkt/out", "--tasks",
                     "gs://bkt/models/tasks.yaml", "--language", "es",
                     env={"CLINICAL_NER_CACHE": str(tmp_path / "cache")})
        with gcs.open("bkt/out/procedure.tsv", "rb") as f:
            return pd.read_csv(f, sep="\t", keep_default_na=False)

    tsv = annotate()
    assert (tmp_path / "cache").exists()  # the model was copied to the worker's cache
    texts = {f.stem: read_text(f) for f in docs} | {r["id"]: r["text"] for r in records}
    assert set(tsv.filename) == set(texts)
    for r in tsv.itertuples():
        assert r.text == texts[r.filename][r.start_span:r.end_span]
    documents = pd.concat([pd.read_parquet(io.BytesIO(gcs.cat(part)))
                           for part in gcs.glob("bkt/out/documents/*.parquet")])
    assert sorted(documents.doc_id) == sorted(texts)
    assert not gcs.glob("bkt/out/.tmp-*")

    markers = {json.loads(gcs.cat(m))["source"]: m for m in gcs.glob("bkt/out/_shards/*/*.*.json")}
    assert set(markers) == {f"gs://bkt/in/txt/{f.name}" for f in docs} | {"gs://bkt/in/e3c.jsonl.gz"}
    assert json.loads(gcs.cat(markers["gs://bkt/in/e3c.jsonl.gz"]))["version"].startswith("md5")
    gcs.rm(markers[f"gs://bkt/in/txt/{docs[0].name}"])  # a rerun redoes that file only
    again = annotate()
    assert json.loads(gcs.cat("bkt/out/run.json"))["counts"]["documents/read"] == 1
    assert sorted(again.itertuples(index=False)) == sorted(tsv.itertuples(index=False))

    from pipeline.report import write_report

    assert write_report("gs://bkt/out") == "gs://bkt/out/report.html"
    assert b"Mentions per label and language" in gcs.cat("bkt/out/report.html")


def test_every_format_gives_the_same_spans(smoke_tasks, tmp_path):
    src = tmp_path / "in"
    (src / "txt").mkdir(parents=True)
    files = spaccc_files(5)
    records = []
    for f in files:
        shutil.copy(f, src / "txt" / f.name)
        records.append({"id": f.stem, "text": read_text(f), "source": "spaccc"})

    def lines(prefix):
        return "".join(json.dumps({**r, "id": f"{prefix}{r['id']}"}) + "\n" for r in records)

    (src / "plain.jsonl").write_text(lines("plain:"))
    (src / "gz.jsonl.gz").write_bytes(gzip.compress(lines("gz:").encode()))
    (src / "zst.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines("zst:").encode()))
    table = pa.Table.from_pylist([{**r, "id": f"pq:{r['id']}"} for r in records])
    pq.write_table(table, src / "rows.parquet", row_group_size=2)
    run_pipeline("--input", str(src), "--output", str(tmp_path / "out"), "--tasks",
                 str(smoke_tasks), "--language", "es", "--split_bytes", "3000")
    spans = pd.read_parquet(tmp_path / "out" / "spans")
    spans["fmt"] = spans.doc_id.str.extract(r"^(plain|gz|zst|pq):")[0].fillna("txt")
    spans["doc"] = spans.doc_id.str.replace(r"^(plain|gz|zst|pq):", "", regex=True)
    by_fmt = {fmt: sorted(zip(g.task, g.doc, g.start, g.end, g.label))
              for fmt, g in spans.groupby("fmt")}
    assert set(by_fmt) == {"txt", "plain", "gz", "zst", "pq"}
    assert len(by_fmt["txt"]) > 100
    assert all(v == by_fmt["txt"] for v in by_fmt.values())
    documents = pd.read_parquet(tmp_path / "out" / "documents")
    assert len(documents) == 25 and (documents.status == "annotated").all()
    meta = documents[documents.doc_id.str.startswith("pq:")].meta
    assert all(json.loads(m) == {"source": "spaccc"} for m in meta)


def test_s3_jsonl_in_and_out(s3_server, smoke_tasks):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("ehr")
    with gzip.open(E3C / "it.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(4)]
    fs.pipe("ehr/in/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    run_pipeline("--input", "s3://ehr/in/*.jsonl", "--output", "s3://ehr/out",
                 "--tasks", str(smoke_tasks), env=s3_server)
    with fs.open("ehr/out/symptom.tsv", "rb") as f:
        tsv = pd.read_csv(f, sep="\t", keep_default_na=False)
    texts = {r["id"]: r["text"] for r in records}
    assert set(tsv.filename) == set(texts)
    assert all(r.text == texts[r.filename][r.start_span:r.end_span] for r in tsv.itertuples())
    assert len(fs.glob("ehr/out/documents/*.parquet")) == 1 and not fs.glob("ehr/out/.tmp-*")
