import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.write import SPAN_SCHEMA, TSV_HEADER, finalize, tsv_line

TRICKY = ['plain', 'say "hi"', '"quoted', 'tab\there', 'line\nbreak', 'cr\ronly', 'crlf\r\nx',
          'ls\u2028sep', 'NUL\x00x'[:3], "it's", ' lead space', 'ñandú']


def test_tsv_round_trips_through_pandas_read_csv():
    rows = [{"doc_id": f"doc-{i}", "label": "SYMPTOM", "start": i, "end": i + len(t), "text": t}
            for i, t in enumerate(TRICKY)]
    data = TSV_HEADER + "\n" + "".join(tsv_line(r) + "\n" for r in rows)
    df = pd.read_csv(io.StringIO(data), sep="\t", keep_default_na=False)
    assert list(df.columns) == ["filename", "label", "start_span", "end_span", "text"]
    assert df["text"].tolist() == TRICKY
    assert df["start_span"].tolist() == [r["start"] for r in rows]
    # The official scorer reads with plain read_csv(sep="\t"): same rows, same offsets.
    official = pd.read_csv(io.StringIO(data), sep="\t")
    assert len(official) == len(rows)
    assert (official["end_span"] - official["start_span"]).tolist() == [len(t) for t in TRICKY]


def _span(doc, source, start):
    return {"doc_id": doc, "task": "t", "label": "X", "start": start, "end": start + 2,
            "text": "ab", "score": 0.9, "lang": "es", "source": source}


def _parquet(path, rows, schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema), path)


def test_finalize_replaces_the_rows_of_redone_shards_and_can_be_retried(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "out" / ".tmp-r2"
    _parquet(out / "spans" / "spans-r1-00000-of-00001.parquet",
             [_span("a", "in/a.txt", 0), _span("b", "in/b.txt", 5)], SPAN_SCHEMA)
    new = tmp / "spans" / "p1.part"
    _parquet(new, [_span("a", "in/a.txt", 7)], SPAN_SCHEMA)
    for attempt in range(2):  # a retried finalize finds its files moved already
        finalize([("spans", str(new))], str(out), ["t"], str(tmp), "r2", ["in/a.txt"])
        spans = pd.read_parquet(out / "spans")
        assert sorted(zip(spans.doc_id, spans.start)) == [("a", 7), ("b", 5)]
        tsv = pd.read_csv(out / "t.tsv", sep="\t")
        assert sorted(zip(tsv.filename, tsv.start_span)) == [("a", 7), ("b", 5)]
        assert sorted(p.name for p in (out / "spans").iterdir()) == [
            "spans-r1-00000-of-00001.parquet", "spans-r2-00000-of-00001.parquet"]
        assert not tmp.exists()
    # a run with nothing redone touches nothing
    before = (out / "t.tsv").stat().st_mtime_ns
    finalize([], str(out), ["t"], str(tmp), "r3", [])
    assert (out / "t.tsv").stat().st_mtime_ns == before
    # files written before spans carried their source cannot be filtered: a clear error
    _parquet(out / "spans" / "spans-00000-of-00001.parquet",
             [{k: v for k, v in _span("c", "", 0).items() if k != "source"}],
             SPAN_SCHEMA.remove(SPAN_SCHEMA.get_field_index("source")))
    with pytest.raises(ValueError, match="older version"):
        finalize([], str(out), ["t"], str(tmp), "r4", ["in/b.txt"])
