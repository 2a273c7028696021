"""Every output's files found back by name, and its rows dropped or skipped by sizes alone."""

import fsspec
import numpy as np
import pandas as pd
import pytest

from transforms.core.records import DocumentRows, Row
from transforms.outputs import OPT_IN, REGISTRY, enabled, every
from transforms.outputs.parts import PartWriter, Place, rewrite


def test_every_output_finds_its_own_files_back_with_their_part():
    fs = fsspec.filesystem("memory")
    root = "/layout"
    for out in every():
        for stream in ("", "symptom"):
            for path in out.paths(root, "20261127T000000Z-ab12-0f3e", stream):
                fs.pipe(path, b"x")
    for out in every():
        found = sorted(set(part for part, _ in out.final_files(fs, root)))
        assert found == ["20261127T000000Z-ab12-0f3e"], out.name
    fs.rm(root, recursive=True)


def test_the_registry_is_the_one_list():
    assert [o.name for o in every()] == list(REGISTRY)
    assert OPT_IN == ("cdm", "note_nlp")
    assert [o.name for o in enabled(["note_nlp"])] == ["spans", "documents", "errors", "tsv",
                                                       "codes", "note_nlp"]


def doc(doc_id, texts, source="a.txt", status="annotated"):
    spans = tuple(Row(doc_id=doc_id, task="t", label="X", start=i, end=i + len(t), text=t,
                      score=0.5, lang="es", source=source) for i, t in enumerate(texts))
    document = Row(doc_id=doc_id, source=source, lang="es", lang_source="option",
                   lang_score=None, n_chars=9, tasks="t", status=status, reason="",
                   n_spans=len(spans), meta=None)
    return DocumentRows(document, spans, (), {}, doc_id, 0)


@pytest.fixture
def part(tmp_path):
    """A part of three documents whose TSV records hold line breaks and tabs."""
    writer = PartWriter(str(tmp_path / "tmp"), "r1", enabled())
    for d in (doc("a", ["x\ny", "p"]), doc("b", ["tab\there"], "b.txt"), doc("c", ["z\r\n"])):
        writer.add(d)
    return writer.close(), tmp_path


def test_dropping_a_document_keeps_the_others_rows_byte_for_byte(part):
    p, tmp = part
    fs = fsspec.filesystem("file")
    root = str(tmp / "out")
    rewrite(fs, Place(folder=str(tmp / "tmp" / p.name)), Place(root=root, part=p.name),
            lambda index: np.asarray(index["source"].to_pylist()) == "b.txt", {2: "dup"})
    tsv = (tmp / "out" / "_tsv" / "t" / f"{p.name}.tsv").read_text()
    assert tsv == 'a\tX\t0\t3\t"x\ny"\na\tX\t1\t2\tp\n'  # a record may span lines
    spans = pd.read_parquet(tmp / "out" / "spans")
    assert spans.doc_id.tolist() == ["a", "a"]  # b dropped, c skipped: no spans
    docs = pd.read_parquet(tmp / "out" / "documents")
    assert list(zip(docs.doc_id, docs.status, docs.reason, docs.n_spans)) == [
        ("a", "annotated", "", 2), ("c", "skipped", "dup", 0)]
    index = pd.read_parquet(tmp / "out" / "_index")
    assert index.source.tolist() == ["a.txt", "a.txt"]
    assert index["spans"].tolist() == [2, 0] and index["documents"].tolist() == [1, 1]
    assert index["tsv/t"].tolist() == [len(tsv.encode()), 0]
    assert not (tmp / "tmp" / p.name / "index.parquet").exists()

