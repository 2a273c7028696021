"""The output's commit protocol against Delta Lake: ``python -m bench.table_format``.

Builds the same history twice on a local folder, ``--runs`` nightly runs of ``--parts`` parts
(one input shard each) of ``--docs`` documents with ``--spans`` mentions each: once through this
project's commit (``transforms.outputs``: ``PartWriter`` then ``finalize``, as the ``Write`` step
runs them) and once as three Delta tables (spans, documents, errors) written by ``deltalake``,
one append per table per run with an app transaction (the run's number), as they are and
vacuumed after each commit (so that readers of the folder see no replaced file). Then, on each,
it times one more night, a forced redo of ``--redo`` shards scattered over the history (Delta:
``DELETE WHERE source IN (...)`` then an append), and a read of the whole span table; and it
counts what a reader that does not speak Delta (pandas, pyarrow, a Parquet glob) gets from the
Delta folder after the redo and after a writer killed (``kill -9``) during its write. Last, two
jobs that overlap: a stale job that commits the same shards after a newer one, on each protocol
(``stale``). Prints one JSON object; docs/reliability.md's "Why not a table format" quotes it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import posixpath
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.core.records import ANNOTATED, DocumentRows, Shard
from transforms.outputs import enabled, output
from transforms.io.fence import Fenced
from transforms.outputs.commit import finalize, mark_run, own_output
from transforms.outputs.parts import PartWriter

TASK = "symptom"


def documents(source: str, docs: int, spans: int) -> list[DocumentRows]:
    """``docs`` synthetic documents of one shard, ``spans`` mentions each."""
    out = []
    for i in range(docs):
        doc_id = f"{posixpath.basename(source)}-{i}"
        rows = tuple({"doc_id": doc_id, "task": TASK, "label": "SYMPTOM", "start": 10 * j,
                      "end": 10 * j + 7, "text": f"dolor {j}", "score": 0.9, "lang": "es",
                      "source": source, "negated": False, "negated_score": 0.1,
                      "uncertain": None, "uncertain_score": None} for j in range(spans))
        out.append(DocumentRows(
            {"doc_id": doc_id, "source": source, "lang": "es", "lang_source": "record",
             "lang_score": 1.0, "n_chars": 10 * spans + 100, "tasks": TASK,
             "status": ANNOTATED, "reason": "", "n_spans": spans, "meta": "{}"},
            rows, key=f"{source}@{i}", position=i))
    return out


def tables(docs: list[DocumentRows]) -> dict[str, pa.Table]:
    """The same rows as one Arrow table per kind (what a Delta writer appends)."""
    return {"spans": pa.Table.from_pylist([s for d in docs for s in d.spans],
                                          output("spans").schema),
            "documents": pa.Table.from_pylist([d.document for d in docs],
                                              output("documents").schema),
            "errors": output("errors").schema.empty_table()}


class Home:
    """This project's protocol: parts written apart, then ``finalize`` (one commit per run)."""

    def __init__(self, out: Path) -> None:
        self.out, self.parts = str(out), {}  # source -> the parts holding it

    def night(self, run: int, batch: dict[str, list[DocumentRows]],
              redone: tuple[str, ...] = ()) -> float:
        """Write and commit one run; returns its seconds (parts written, then ``finalize``)."""
        t0 = time.perf_counter()
        run_id = f"r{run:05d}"
        token = own_output(self.out, run_id)
        tmp = posixpath.join(self.out, f".tmp-{run_id}")
        parts = []
        for source, docs in batch.items():
            writer = PartWriter(tmp, run_id, enabled())
            for d in docs:
                writer.add(d)
            parts.append(writer.close())
        shards = [Shard(s, earlier=tuple(self.parts.get(s, ()))) for s in redone]
        finalize(parts, self.out, [TASK], tmp, run_id, [], shards, token)
        mark_run(self.out, run_id)
        took = time.perf_counter() - t0
        for part in parts:
            for source in part.sources:
                self.parts[source] = [part.name]
        return took

    def read(self) -> int:
        return pq.read_table(posixpath.join(self.out, "spans")).num_rows


class Delta:
    """Three Delta tables, one append per table per run (app transaction = the run); with
    ``vacuum``, the files no longer in the table removed after each commit."""

    def __init__(self, out: Path, vacuum: bool = False) -> None:
        self.out, self.vacuum = out, vacuum

    def night(self, run: int, batch: dict[str, list[DocumentRows]],
              redone: tuple[str, ...] = ()) -> float:
        """Write and commit one run; returns its seconds (Delta writes and commits at once)."""
        from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

        t0 = time.perf_counter()
        rows = tables([d for docs in batch.values() for d in docs])
        for kind, table in rows.items():
            uri = str(self.out / kind)
            if redone and DeltaTable.is_deltatable(uri):
                listed = ", ".join("'" + s.replace("'", "''") + "'" for s in redone)
                DeltaTable(uri).delete(f"source IN ({listed})")
            write_deltalake(uri, table, mode="append", commit_properties=CommitProperties(
                app_transactions=[Transaction("clinical-ner", run)]))
            if self.vacuum:
                DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False,
                                       dry_run=False)
        return time.perf_counter() - t0

    def read(self) -> int:
        from deltalake import DeltaTable

        return DeltaTable(str(self.out / "spans")).to_pyarrow_table().num_rows

    def plain_read(self) -> int:
        """Rows a reader that does not speak Delta gets (every Parquet file in the folder)."""
        return pq.read_table(str(self.out / "spans")).num_rows


def _append(uri: str, table: pa.Table) -> None:  # the writer that gets killed
    from deltalake import write_deltalake

    write_deltalake(uri, table, mode="append", target_file_size=256 << 10)


def killed_writer(uri: str, table: pa.Table) -> dict:
    """A Delta append killed (``kill -9``) as soon as its first data file is on disk: the
    files it left outside the log, and the rows each kind of reader sees."""
    from deltalake import DeltaTable

    def files() -> set[str]:
        return {p.name for p in Path(uri).glob("*.parquet")}

    before, rows = files(), DeltaTable(uri).count()
    proc = multiprocessing.get_context("spawn").Process(target=_append, args=(uri, table))
    proc.start()
    while proc.is_alive() and not files() - before:
        time.sleep(0.01)
    proc.kill()
    proc.join()
    table_now = DeltaTable(uri)
    left = files() - before - {Path(u).name for u in table_now.file_uris()}
    return {"files_outside_log": len(left), "delta_rows_added": table_now.count() - rows,
            "plain_reader_rows_added": sum(pq.read_metadata(Path(uri) / f).num_rows
                                           for f in left)}


def stale(work: Path, docs: int, spans: int) -> dict:
    """Two jobs on one output: the newer one commits a shard, then a stale one (paused past
    its lease) commits the same shard, as it had read the output before. This protocol: the
    stale job's token is older, its commit is refused. Delta: a stale append is taken (the
    shard's rows twice); a stale ``replaceWhere`` of the shard is refused, but per table, so a
    job that loses on one table after winning on another leaves the tables of two runs."""
    from deltalake import DeltaTable, write_deltalake

    shard = "in/night-x.jsonl"
    rows = {kind: t.num_rows for kind, t in tables(documents(shard, docs, spans)).items()}
    out = str(work / "stale-home")
    home = Home(Path(out))
    old = own_output(out, "r-stale")  # it took the output, then paused
    home.night(1, {shard: documents(shard, docs, spans)})
    writer = PartWriter(posixpath.join(out, ".tmp-r-stale"), "r-stale", enabled())
    for d in documents(shard, docs, spans):
        writer.add(d)
    try:
        finalize([writer.close()], out, [TASK], posixpath.join(out, ".tmp-r-stale"), "r-stale",
                 [], [], old)
        refused = False
    except Fenced:
        refused = True
    result = {"this_protocol": {"stale_commit_refused": refused,
                                "span_rows": home.read(), "span_rows_expected": rows["spans"]}}
    span_table = tables(documents(shard, docs, spans))["spans"]
    for mode in ("append", "replace"):
        uri = str(work / f"stale-delta-{mode}")
        write_deltalake(uri, span_table.slice(0, 0))
        before = DeltaTable(uri)  # the stale job read the table here
        write_deltalake(uri, span_table, mode="append")  # the newer job's commit
        try:
            if mode == "append":
                write_deltalake(before, span_table, mode="append")
            else:
                write_deltalake(before, span_table, mode="overwrite",
                                predicate=f"source = '{shard}'")
            refused = False
        except Exception:  # noqa: BLE001 - deltalake's CommitFailedError
            refused = True
        result[f"delta_{mode}"] = {"stale_commit_refused": refused,
                                   "span_rows": DeltaTable(uri).count(),
                                   "span_rows_expected": rows["spans"]}
    return result


def measure(runs: int, parts: int, docs: int, spans: int, redo: int, work: Path) -> dict:
    """Both protocols over the same history and the same next night, redo and read."""
    shards = [[f"in/night{r:04d}-{p}.jsonl" for p in range(parts)] for r in range(runs + 1)]
    result: dict = {"history": {"runs": runs, "parts_per_run": parts, "docs_per_part": docs,
                                "spans_per_doc": spans,
                                "span_rows": runs * parts * docs * spans}}
    step = max(1, runs // max(1, redo))
    redone = tuple(shards[r][0] for r in range(0, runs, step))[:redo]
    for name, store in (("home", Home(work / "home")), ("delta", Delta(work / "delta")),
                        ("delta_vacuumed", Delta(work / "delta-vacuumed", vacuum=True))):
        history = []
        for r in range(runs):
            history.append(store.night(r, {s: documents(s, docs, spans) for s in shards[r]}))
        next_night = store.night(runs, {s: documents(s, docs, spans) for s in shards[runs]})
        redo_s = store.night(runs + 1, {s: documents(s, docs, spans) for s in redone}, redone)
        t0 = time.perf_counter()
        rows = store.read()
        read_s = time.perf_counter() - t0
        expect = (runs + 1) * parts * docs * spans
        result[name] = {
            "first_nights_s": round(statistics.median(history[:5]), 3),
            "last_nights_s": round(statistics.median(history[-5:]), 3),
            "next_night_s": round(next_night, 3), "redo_s": round(redo_s, 3),
            "read_s": round(read_s, 3), "rows_read": rows, "rows_expected": expect}
        if isinstance(store, Delta):
            result[name]["plain_reader_rows"] = store.plain_read()
            big = tables(documents("in/big.jsonl", 50_000, spans))["spans"]
            result[name]["killed_writer"] = killed_writer(str(store.out / "spans"), big)
    result["stale"] = stale(work, docs, spans)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="nights of history")
    ap.add_argument("--parts", type=int, default=4, help="parts (input shards) per night")
    ap.add_argument("--docs", type=int, default=250, help="documents per part")
    ap.add_argument("--spans", type=int, default=8, help="mentions per document")
    ap.add_argument("--redo", type=int, default=5, help="shards a forced rerun redoes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        figures = measure(args.runs, args.parts, args.docs, args.spans, args.redo, Path(work))
    figures["machine"] = f"{os.cpu_count()} cores"
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
