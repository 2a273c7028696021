"""Parts, duplicate ids, and committing a run over earlier runs' outputs, retried or not."""

import io
import json
from dataclasses import replace

import fsspec

import pandas as pd
import pyarrow.parquet as pq
import pytest

from transforms.core.records import DocumentRows, Row, Shard
from transforms.io.shards import Resume, pending, write_marker
from transforms.outputs import enabled, output
from transforms.io import fence
from transforms.outputs.commit import (LayoutError, check_layout, commit_part, commit_state,
                                       finalize, own_output, recover, run_states, settle)
from transforms.outputs.parts import DocRef, PartWriter
from transforms.outputs.tsv import HEADER as TSV_HEADER, tsv_line

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


def exported(rows, with_exports=True):
    """``rows`` with export rows: a CDM stand-in per document, a NOTE_NLP row per span."""
    from transforms.formats.omop import NOTE_NLP_SCHEMA

    if not with_exports:
        return rows
    doc_id = rows.document["doc_id"]
    notes = tuple({**dict.fromkeys(NOTE_NLP_SCHEMA.names), "note_nlp_id": s["start"],
                   "note_id": 1, "lexical_variant": f"{doc_id}:{s['start']}"}
                  for s in rows.spans)
    return replace(rows, extra={"cdm": ({"doc": doc_id},), "note_nlp": notes})


def exports_of(out):
    """The committed CDM stand-ins and NOTE_NLP rows, each run through its CSV copy too."""
    cdm = sorted(json.loads(line)["doc"] for f in (out / "cdm").iterdir()
                 for line in f.read_text().splitlines())
    notes = sorted(pd.read_parquet(out / "note_nlp" / "parquet").lexical_variant)
    csv = sorted(v for f in (out / "note_nlp" / "csv").iterdir()
                 for v in pd.read_csv(f).lexical_variant)
    assert csv == notes
    return cdm, notes


def document(doc_id, source, spans=(), key=None, position=0, status="annotated", reason=""):
    span_rows = tuple(Row(doc_id=doc_id, task="t", label="X", start=s, end=s + 2, text="ab",
                          score=0.9, lang="es", source=source) for s in spans)
    doc = Row(doc_id=doc_id, source=source, lang="es", lang_source="option", lang_score=None,
              n_chars=10, tasks="t", status=status, reason=reason, n_spans=len(spans),
              meta=None)
    errors = (Row(doc_id=doc_id, key=key or source, source=source, task="t", stage="inference",
                  error="IndexError"),) if status == "failed" else ()
    return DocumentRows(doc, span_rows, errors, {}, key or source, position)


def token_of(out, run_id):
    """The token ``run_id`` took on ``out``."""
    fs, root = fsspec.core.url_to_fs(str(out))
    return next(e.seq for e in fence.entries(fs, root)
                if e.run == run_id and e.kind == fence.OWN)


def write_run(out, run_id, docs, redone=(), per_part=100, commit=True, exports=(), token=None):
    """Take a token (unless given), write ``docs`` into parts as a run's workers would, find
    its duplicates, commit."""
    token = own_output(str(out), run_id) if token is None else token
    tmp = f"{out}/.tmp-{run_id}"
    parts, refs, writer = [], [], None
    for d in docs:
        if writer is None or writer.documents >= per_part:
            if writer:
                parts.append(writer.close())
            writer = PartWriter(tmp, run_id, enabled(exports))
        refs.append(writer.add(d))
    if writer:
        parts.append(writer.close())
    by_id = {}
    for r in refs:
        by_id.setdefault(r.doc_id, []).append(r)
    dups = [d for i, rs in by_id.items() for d in duplicates(i, rs)]
    if commit:
        finalize(parts, str(out), ["t"], tmp, run_id, dups, list(redone), token)
    return parts, refs, dups


def rows(out):
    spans = pd.read_parquet(out / "spans")
    docs = pd.read_parquet(out / "documents")
    tsv = pd.read_csv(out / "t.tsv", sep="\t", keep_default_na=False)
    return (sorted(zip(spans.doc_id, spans.start)), sorted(zip(docs.doc_id, docs.status)),
            sorted(zip(tsv.filename, tsv.start_span)))


def plain_spans(out):
    """The span rows a plain Parquet reader gets from ``out/spans/`` (none where no file)."""
    spans = pd.read_parquet(out / "spans") if (out / "spans").exists() else pd.DataFrame()
    return sorted(zip(spans.doc_id, spans.start)) if len(spans.columns) else []


def test_a_run_commits_its_parts_and_the_tsv(tmp_path):
    out = tmp_path / "out"
    parts, _, _ = write_run(out, "r1", [document("a", "in/a.txt", [0, 5]),
                                        document("b", "in/b.txt", [3])], per_part=1)
    assert len(parts) == 2
    spans, docs, tsv = rows(out)
    assert spans == tsv == [("a", 0), ("a", 5), ("b", 3)]
    assert docs == [("a", "annotated"), ("b", "annotated")]
    assert sorted(p.name for p in (out / "spans").iterdir()) == sorted(
        f"spans-{p.name}.parquet" for p in parts)
    assert run_states(*fsspec.core.url_to_fs(str(out))) == {
        "r1": {"committed", "dropped", "moved", "completed"}}
    assert not (out / ".tmp-r1").exists()


def test_commit_is_safe_to_retry(tmp_path):
    out = tmp_path / "out"
    parts, _, dups = write_run(out, "r1", [document("a", "in/a.txt", [0])])
    before = (out / "t.tsv").read_bytes()
    finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", dups, [], token_of(out, "r1"))
    assert (out / "t.tsv").read_bytes() == before
    assert rows(out)[0] == [("a", 0)]


def duplicates(doc_id, refs):
    """The later duplicates among ``refs`` (as the write stage takes them from ``settle``)."""
    return [s.duplicate for s in settle(doc_id, refs) if s.duplicate is not None]


def test_later_duplicates_are_skipped_and_lose_their_spans(tmp_path):
    out = tmp_path / "out"
    docs = [document("x", "in/r.jsonl", [0, 4], key="in/r.jsonl@0", position=0),
            document("y", "in/r.jsonl", [1], key="in/r.jsonl@90", position=90),
            document("x", "in/r.jsonl", [7], key="in/r.jsonl@200", position=200),
            document("x", "in/r.jsonl", [], key="in/r.jsonl@1000", position=1000,
                     status="failed", reason="read: not JSON")]
    # the records arrive out of input order: position decides, not arrival or key text
    _, _, dups = write_run(out, "r1", [docs[2], docs[1], docs[0], docs[3]], per_part=2)
    assert [d.ref.key for d in dups] == ["in/r.jsonl@200"]  # the unreadable one stays failed
    spans, states, tsv = rows(out)
    assert spans == tsv == [("x", 0), ("x", 4), ("y", 1)]
    assert states == [("x", "annotated"), ("x", "failed"), ("x", "skipped"), ("y", "annotated")]
    skipped = pd.read_parquet(out / "documents").query("status == 'skipped'")
    assert skipped.reason.tolist() == ["duplicate id: kept the record at in/r.jsonl@0"]
    assert skipped.n_spans.tolist() == [0]


def test_duplicates_rule_by_position():
    refs = [DocRef("x", "b.jsonl", 0, "b@0", "p", 0, "annotated", False),
            DocRef("x", "a.jsonl", 500, "a@500", "p", 1, "annotated", False),
            DocRef("x", "a.jsonl", 20, "a@20", "p", 2, "annotated", False)]
    assert [(d.ref.key, d.kept) for d in duplicates("x", refs)] == [("a@500", "a@20"),
                                                                   ("b@0", "a@20")]
    # the numeric position decides, not the key's text ("a@100" sorts before "a@90")
    refs = [DocRef("y", "a.jsonl", 100, "a@100", "p", 0, "annotated", False),
            DocRef("y", "a.jsonl", 90, "a@90", "p", 1, "annotated", False)]
    assert [(d.ref.key, d.kept) for d in duplicates("y", refs)] == [("a@100", "a@90")]


def test_a_redone_shard_replaces_its_rows_in_earlier_parts_only(tmp_path):
    out = tmp_path / "out"
    resume = Resume(str(out), {"c": 1})
    a, b = Shard("in/a.txt", 1, "v1"), Shard("in/b.txt", 1, "v1")
    parts, _, _ = write_run(out, "r1", [document("a", a.url, [0]), document("b", b.url, [5])])
    for shard in (a, b):
        write_marker(shard, {}, [p.name for p in parts], resume, "r1", "now")
    untouched = {p: p.stat().st_mtime_ns for p in (out / "documents").iterdir()}
    # a second run adds a new shard: the TSV is appended, no earlier part is rewritten
    write_run(out, "r2", [document("c", "in/c.txt", [1])])
    assert rows(out)[2] == [("a", 0), ("b", 5), ("c", 1)]
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())
    # a third run redoes a.txt (it changed): its old rows go, b's stay; its marker's deletion
    # would not lose that (the shard's index names the parts)
    (out / "_shards" / resume.marker(a)).unlink()
    (changed,) = pending([a.with_(version="v2")], resume)
    assert changed.stale == () and changed.earlier == tuple(sorted(p.name for p in parts))
    write_run(out, "r3", [document("a", a.url, [9])], redone=[changed])
    spans, docs, tsv = rows(out)
    assert spans == tsv == [("a", 9), ("b", 5), ("c", 1)]
    assert docs == [("a", "annotated"), ("b", "annotated"), ("c", "annotated")]


@pytest.mark.parametrize("moved", [False, True], ids=["temporary", "moved by an older version"])
def test_parts_of_a_run_that_never_committed_are_removed(tmp_path, moved):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0])])
    # r2 crashed before committing (or, in a version before the log, after moving its parts)
    parts, _, _ = write_run(out, "r2", [document("b", "in/b.txt", [4])], commit=False)
    fs, root = fsspec.core.url_to_fs(str(out))
    for p in parts if moved else ():
        commit_part(fs, root, p.name, f"{root}/.tmp-r2", {})
    assert (("b", 4) in rows(out)[0]) == moved
    write_run(out, "r3", [document("c", "in/c.txt", [2])])
    spans, _, tsv = rows(out)
    assert spans == tsv == [("a", 0), ("c", 2)]
    assert not (out / ".tmp-r2").exists()


def test_a_retried_append_does_not_append_twice(tmp_path):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0])])
    parts, _, dups = write_run(out, "r2", [document("b", "in/b.txt", [4])], commit=False)
    from transforms.outputs import tsv

    calls = []
    real = tsv._append

    def crash_after_appending(*args):
        real(*args)
        calls.append(1)
        raise ConnectionResetError("lost the worker")

    tsv._append = crash_after_appending
    try:
        with pytest.raises(ConnectionResetError):
            finalize(parts, str(out), ["t"], f"{out}/.tmp-r2", "r2", dups, [],
                     token_of(out, "r2"))
    finally:
        tsv._append = real
    assert calls == [1]
    assert json.loads((out / "_tsv" / "t.journal").read_text())["run"] == "r2"
    finalize(parts, str(out), ["t"], f"{out}/.tmp-r2", "r2", dups, [], token_of(out, "r2"))
    assert rows(out)[2] == [("a", 0), ("b", 4)]
    assert not (out / "_tsv" / "t.journal").exists()
    fs, root = fsspec.core.url_to_fs(str(out))
    assert run_states(fs, root)["r2"] == {"committed", "dropped", "moved", "completed"}


def test_an_empty_run_still_writes_typed_tables(tmp_path):
    out = tmp_path / "out"
    write_run(out, "r1", [])
    for kind in ("spans", "documents", "errors"):
        (f,) = (out / kind).iterdir()
        assert pq.read_schema(f).names and pq.read_metadata(f).num_rows == 0
    assert (out / "t.tsv").read_text() == TSV_HEADER + "\n"



def test_a_run_that_committed_but_never_marked_its_shards_is_redone_without_doubles(tmp_path):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0]), document("b", "in/b.txt", [5])])
    # r1 stopped before writing its markers: a rerun redoes both files, with no index to say
    # where their rows are; r1's parts still must give them up
    write_run(out, "r2", [document("a", "in/a.txt", [9]), document("b", "in/b.txt", [6])])
    spans, docs, tsv = rows(out)
    assert spans == tsv == [("a", 9), ("b", 6)]
    assert docs == [("a", "annotated"), ("b", "annotated")]


def test_the_opt_in_outputs_follow_their_documents_through_duplicates_and_reruns(tmp_path):
    out = tmp_path / "out"
    resume = Resume(str(out), {"c": 1})
    a, b = Shard("in/a.jsonl", 1, "v1"), Shard("in/b.txt", 1, "v1")
    kinds = ("cdm", "note_nlp")
    docs = [document("x", a.url, [0, 4], key="a@0", position=0),
            document("y", a.url, [1], key="a@90", position=90),
            document("x", a.url, [7], key="a@200", position=200),  # a duplicate: its rows go
            document("b", b.url, [5])]
    parts, _, _ = write_run(out, "r1", [exported(d) for d in docs], per_part=2, exports=kinds)
    assert exports_of(out) == (["b", "x", "y"], ["b:5", "x:0", "x:4", "y:1"])
    for shard in (a, b):
        write_marker(shard, {}, [p.name for p in parts], resume, "r1", "now")
    # a rerun redoes a.jsonl (it changed): its earlier export rows go, b's stay
    (out / "_shards" / resume.marker(a)).unlink()
    (changed,) = pending([a.with_(version="v2")], resume)
    write_run(out, "r2", [exported(document("x", a.url, [9]))], redone=[changed],
              exports=kinds)
    assert exports_of(out) == (["b", "x"], ["b:5", "x:9"])
    # a run that never committed leaves no export file behind once the next one commits
    write_run(out, "r3", [exported(document("z", "in/z.txt", [3]))], commit=False,
              exports=kinds)
    write_run(out, "r4", [exported(document("c", "in/c.txt", [2]))], exports=kinds)
    assert exports_of(out) == (["b", "c", "x"], ["b:5", "c:2", "x:9"])


class Crash(BaseException):
    """The process killed at this point: nothing after it runs."""


def crashing_at(monkeypatch, k: int):
    """A context in which the ``k``-th change to an output (a write, move, append or removal)
    raises ``Crash`` instead of happening; its ``count`` says how many changes were made."""
    import itertools

    from fsspec.implementations.local import LocalFileSystem

    from transforms.io import shards
    from transforms.outputs import base, commit, parts, tsv

    ctx = monkeypatch.context()
    patched = ctx.__enter__()
    counter = itertools.count(1)
    ctx.count = 0

    def wrap(fn):
        def changed(*args, **kwargs):
            if any(str(a).endswith("/_lock") for a in args):  # the lock is no output: a
                return fn(*args, **kwargs)  # killed holder's lock is taken over at once
            ctx.count = next(counter)
            if ctx.count == k:
                raise Crash(k)
            return fn(*args, **kwargs)
        return changed

    for module, name in ((parts, "move"), (parts, "write_table"), (base, "write_table"),
                         (base, "atomic_output"), (tsv, "atomic_output"), (tsv, "_append"),
                         (commit, "atomic_output"), (shards, "write_atomically")):
        patched.setattr(module, name, wrap(getattr(module, name)))
    patched.setattr(LocalFileSystem, "rm", wrap(LocalFileSystem.rm))
    return ctx


def next_run(out, resume, shard_list, docs, run_id, kinds):
    """What the next run does: check the output's layout, recover, then redo the shards
    without a marker."""
    check_layout(str(out))
    token = own_output(str(out), run_id)
    recover(str(out), ["t"], run_id, token)
    todo = list(pending(shard_list, resume))
    if todo:
        urls = {s.url for s in todo}
        parts, _, _ = write_run(out, run_id, [d for d in docs if d.document["source"] in urls],
                                redone=[s for s in todo if s.earlier], exports=kinds,
                                token=token)
        for shard in todo:
            write_marker(shard, {}, [p.name for p in parts if shard.url in p.sources], resume,
                         run_id, "now")


@pytest.mark.parametrize("redo", ["abc", "a"], ids=["all", "one-shard"])
@pytest.mark.parametrize("kinds", [(), ("cdm", "note_nlp")], ids=["default", "exports"])
def test_a_forced_rerun_killed_at_any_change_loses_nothing(tmp_path, monkeypatch, kinds, redo):
    """``redo``: the shards the rerun forces (one of three: the first night's part keeps rows,
    rewritten in place)."""
    shard_list = [Shard(f"in/{n}.txt", 1, "v1") for n in "abc"]
    docs = [exported(document(s.url[3], s.url, [i, i + 7]), bool(kinds))
            for i, s in enumerate(shard_list)]

    def outputs(out):
        return rows(out), exports_of(out) if kinds else None

    clean = None
    for k in range(1, 200):
        out = tmp_path / f"out-{k}"
        resume = Resume(str(out), {"c": 1})
        next_run(out, resume, shard_list, docs, "r1", kinds)  # the first night, complete
        clean = clean or outputs(out)
        forced = [s for s in pending(shard_list, Resume(str(out), {"c": 1}, force=True))
                  if s.url[3] in redo]
        ctx = crashing_at(monkeypatch, k)
        try:  # a --force rerun, killed at its k-th change of the output
            parts, _, _ = write_run(out, "r2", [d for d in docs if d.document["doc_id"] in redo],
                                    redone=forced, exports=kinds)
            for shard in forced:
                write_marker(shard, {}, [p.name for p in parts], resume, "r2", "now")
            finished = True
        except Crash:
            finished = False
        finally:
            ctx.__exit__(None, None, None)
        spans = plain_spans(out)  # what a plain reader gets until the next run: never twice
        assert len(spans) == len(set(spans)) and set(spans) <= set(clean[0][0]), k
        if not commit_state(str(out))[1]:  # and, where no commit is in progress, every row
            assert outputs(out) == clean, f"killed at change {k}: no commit said in progress"
        next_run(out, resume, shard_list, docs, "r3", kinds)  # then the same command again
        assert outputs(out) == clean, f"killed at change {k}"
        forced = list(pending(shard_list, Resume(str(out), {"c": 1}, force=True)))
        write_run(out, "r4", docs, redone=forced, exports=kinds)  # and --force once more
        assert outputs(out) == clean, f"killed at change {k}, then forced"
        assert not list(out.glob(".tmp-*"))
        if finished:
            break
    assert k > (25 if kinds else 15)  # each change of the outputs is a place to be killed


def test_an_output_whose_committed_parts_have_no_index_is_refused_before_reading(tmp_path):
    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0])])
    check_layout(str(out))
    for index in (out / "_index").iterdir():
        index.unlink()  # as the version before part indexes wrote it
    with pytest.raises(LayoutError, match="earlier version.*write to a new --output"):
        check_layout(str(out))


def test_a_write_cut_off_by_a_kill_is_never_read_as_data_and_the_next_run_removes_it(tmp_path):
    from transforms.io.storage import atomic_output

    out = tmp_path / "out"
    parts, _, _ = write_run(out, "r1", [document("a", "in/a.txt", [0])])
    clean = rows(out)
    fs, root = __import__("fsspec").core.url_to_fs(str(out))
    for kind in ("spans", "documents"):  # the process dies while writing a part's file
        with pytest.raises(Crash):
            with atomic_output(fs, output(kind).paths(root, "r2-x", "")[0]) as f:
                f.write(b"PAR1 half a file")
                raise Crash
    assert rows(out) == clean  # pandas and pyarrow skip the hidden half-written files
    found = recover(str(out), ["t"], "r3", None)  # found, not yet removed
    assert len(found) == 2 and len(list(out.rglob("*.inprogress"))) == 2
    assert recover(str(out), ["t"], "r3", own_output(str(out), "r3")) == found
    assert not list(out.rglob("*.inprogress"))


def test_a_rerun_without_a_task_takes_its_rows_out_of_that_task_s_tsv_too(tmp_path):
    out = tmp_path / "out"
    resume = Resume(str(out), {"c": 1})
    shard = Shard("in/a.txt", 1, "v1")
    both = document("a", shard.url, [0, 5])
    u_spans = tuple(Row({**s, "task": "u"}) for s in both.spans)
    parts, _, _ = write_run(out, "r1", [replace(both, spans=both.spans + u_spans)],
                            commit=False)
    finalize(parts, str(out), ["t", "u"], f"{out}/.tmp-r1", "r1", [], [],
             token_of(out, "r1"))  # tasks t and u
    write_marker(shard, {}, [p.name for p in parts], resume, "r1", "now")
    assert len(pd.read_csv(out / "u.tsv", sep="\t")) == 2
    resume = Resume(str(out), {"c": 2})  # a task file without u: every shard redone
    (changed,) = pending([shard], resume)
    write_run(out, "r2", [document("a", shard.url, [7])], redone=[changed])
    assert rows(out)[2] == [("a", 7)]
    assert len(pd.read_csv(out / "u.tsv", sep="\t")) == 0  # no rows the spans no longer hold


def test_a_run_that_committed_without_marking_gives_up_its_rows_to_the_next_owner(tmp_path):
    from transforms.outputs.commit import record_state

    out = tmp_path / "out"
    # r1 committed a.txt and b.txt, then stopped before marking them; r2 takes the output
    # (its token names r1 as unmarked), and redoes a.txt with no marker to say where its
    # rows are: r1's row of a.txt goes, of b.txt stays
    write_run(out, "r1", [document("a", "in/a.txt", [1]), document("b", "in/b.txt", [3])])
    write_run(out, "r2", [document("a", "in/a.txt", [2])])
    record_state(fsspec.filesystem("file"), str(out), "r2", "marked")
    spans, docs, tsv = rows(out)
    assert spans == tsv == [("a", 2), ("b", 3)]
    assert docs == [("a", "annotated"), ("b", "annotated")]


def test_a_job_overtaken_by_a_newer_owner_cannot_commit_and_leaves_nothing_visible(tmp_path):
    out = tmp_path / "out"
    # r1 took the output, wrote its parts, then paused (SIGSTOP, a VM pause, a long GC) past
    # its lease; r2 took the output over, did a.txt and b.txt, committed and marked them
    token1 = own_output(str(out), "r1")
    parts, _, _ = write_run(out, "r1", [document("a", "in/a.txt", [1])], commit=False,
                            token=token1)
    write_run(out, "r2", [document("a", "in/a.txt", [2]), document("b", "in/b.txt", [3])])
    assert not (out / ".tmp-r1").exists()  # r2 removed r1's work: it can never commit
    before = rows(out)
    with pytest.raises(fence.Fenced, match=r"run r2 \(host .*\) took the output over"):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", [], [], token1)
    assert rows(out) == before == ([("a", 2), ("b", 3)], [("a", "annotated"), ("b", "annotated")],
                                   [("a", 2), ("b", 3)])


def test_a_stale_commit_loses_the_race_for_its_log_entry_to_the_newer_owner(tmp_path,
                                                                           monkeypatch):
    """The check and the commit's entry are two steps: a newer owner that takes its token
    between them takes the entry's number, and the store refuses the stale one."""
    out = tmp_path / "out"
    token1 = own_output(str(out), "r1")
    parts, _, _ = write_run(out, "r1", [document("a", "in/a.txt", [1])], commit=False,
                            token=token1)
    real, raced = fence.check_owner, []

    def check_then_pause(fs, root, run, token):
        real(fs, root, run, token)
        if run == "r1" and not raced:  # r1 passed its check, then paused: r2 came
            raced.append(own_output(str(out), "r2"))

    monkeypatch.setattr(fence, "check_owner", check_then_pause)
    with pytest.raises(fence.Fenced, match="run r2"):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", [], [], token1)
    fs, root = fsspec.core.url_to_fs(str(out))
    assert raced and "r1" not in run_states(fs, root)
    assert not (out / "spans").exists()  # nothing of r1 visible


def test_a_retried_commit_that_died_between_moving_two_parts_keeps_every_document(
        tmp_path, monkeypatch):
    from transforms.outputs import commit

    out = tmp_path / "out"
    token = own_output(str(out), "r1")
    parts, _, dups = write_run(out, "r1", [document(x, f"in/{x}.txt", [i])
                                           for i, x in enumerate("ab")],
                               per_part=1, commit=False, token=token)
    real, moved = commit.commit_part, []

    def die_after_the_first(*args):
        if moved:
            raise ConnectionResetError("the worker was lost")
        real(*args)
        moved.append(args[2])

    monkeypatch.setattr(commit, "commit_part", die_after_the_first)
    with pytest.raises(ConnectionResetError):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", dups, [], token)
    monkeypatch.setattr(commit, "commit_part", real)
    from transforms.outputs.tsv import Tsv

    completed, complete = [], Tsv.complete
    monkeypatch.setattr(Tsv, "complete", lambda self, fs, root, run, streams, mine: (
        completed.append(mine), complete(self, fs, root, run, streams, mine)))
    finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", dups, [], token)  # Beam retries
    assert rows(out)[0] == rows(out)[2] == [("a", 0), ("b", 1)]
    # the retry finishes its own commit: it adds its parts, it does not rebuild the history
    assert completed and all(m == [p.name for p in parts] for m in completed)


def test_a_commit_waits_for_another_jobs_hold_on_the_output(tmp_path):
    import threading
    import time

    from transforms.io.lock import OutputBusy, OutputLock

    out = tmp_path / "out"
    parts, _, _ = write_run(out, "r1", [document("a", "in/a.txt", [1])], commit=False)
    other = OutputLock(str(out), "r0")
    other.acquire()
    with pytest.raises(OutputBusy, match="being written by run r0"):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", [], [], token_of(out, "r1"),
                 lock_wait_s=0)
    assert not (out / "spans").exists() or not list((out / "spans").glob("*r1*"))
    threading.Timer(1.0, other.release).start()
    t0 = time.monotonic()
    finalize(parts, str(out), ["t"], f"{out}/.tmp-r1", "r1", [], [], token_of(out, "r1"),
             lock_wait_s=60)
    assert time.monotonic() - t0 >= 0.9 and rows(out)[0] == [("a", 1)]
    assert not (out / "_lock").exists()  # taken for the commit, given back after it


def test_each_record_is_counted_once_its_duplicate_state_is_decided():
    def ref(key, position, status="annotated", read_failed=False, spans=2):
        counts = {"documents/read": 1, f"documents/{status}": 1, "documents/lang_es": 1,
                  "windows/t": 1, **({"spans/t/X": spans} if spans else {})}
        return DocRef("x", "a.jsonl", position, key, "p", position, status, read_failed,
                      tuple(sorted(counts.items())))

    first, later, unreadable = settle("x", [ref("a@90", 90), ref("a@10", 10),
                                            ref("a@500", 500, "failed", True, 0)])
    assert first.ref.key == "a@10" and first.duplicate is None and first.status == "annotated"
    assert first.counts == {"documents/read": 1, "documents/annotated": 1,
                            "documents/lang_es": 1, "windows/t": 1, "spans/t/X": 2}
    assert later.duplicate.kept == "a@10" and later.status == "skipped"
    assert later.counts == {"documents/read": 1, "documents/skipped": 1,
                            "documents/lang_es": 1, "windows/t": 1,
                            "documents/duplicate_ids": 1}
    assert later.shard_counts() == {"documents": 1, "skipped": 1, "spans": 0}
    assert unreadable.duplicate is None and unreadable.status == "failed"
    assert unreadable.counts["documents/duplicate_ids"] == 1


def test_a_kill_while_the_tsv_takes_a_run_s_rows_never_leaves_a_row_cut_short(tmp_path,
                                                                             monkeypatch):
    from transforms.outputs import tsv

    out = tmp_path / "out"
    write_run(out, "r1", [document("a", "in/a.txt", [0, 3077])])
    before = (out / "t.tsv").read_bytes()
    parts, _, dups = write_run(out, "r2", [document("b", "in/b.txt", [4, 3084])], commit=False)
    real = tsv._copy_into

    def killed_halfway(fs, dst, paths):
        data = b"".join(fs.cat(p) for p in paths)
        dst.write(data[: len(data) // 2 - 3])  # a row cut after its offsets
        raise Crash("killed while writing")

    monkeypatch.setattr(tsv, "_copy_into", killed_halfway)
    with pytest.raises(Crash):
        finalize(parts, str(out), ["t"], f"{out}/.tmp-r2", "r2", dups, [], token_of(out, "r2"))
    assert (out / "t.tsv").read_bytes() == before  # readers see the last whole file
    monkeypatch.setattr(tsv, "_copy_into", real)
    write_run(out, "r3", [document("c", "in/c.txt", [1])])  # the next run finishes r2's commit
    assert rows(out)[2] == [("a", 0), ("a", 3077), ("b", 4), ("b", 3084), ("c", 1)]
