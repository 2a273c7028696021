"""Outputs on any fsspec filesystem (local, gs://, s3://, memory://), committed atomically:

- ``<out>/<task>.tsv``: MultiClinAI format ``filename label start_span end_span text``;
- ``<out>/spans/spans-<run>-<part>.parquet``: one row per mention, with its qualifier flags
  (``negated``, ``uncertain`` and their scope scores; null where no qualifier ran);
- ``<out>/documents/documents-<run>-<part>.parquet``: one row per input record;
- ``<out>/errors/errors-<run>-<part>.parquet``: one dead letter per failure (no text);
- ``<out>/_tsv/<task>/<run>-<part>.tsv``: the TSV rows of each part (``<task>.tsv`` is their
  concatenation);
- with ``--write``, the opt-in outputs and their index (``cdm/``, ``note_nlp/``, ``_index/``: see
  ``transforms.io.exports``), kept in step with the rest at every step below;
- ``<out>/_shards/``: a completion marker per input shard (see ``transforms.io.shards``);
- ``<out>/_runs/``: which runs committed (``<run>.committed``, ``.tsv``, ``.marked``).

Each worker writes the rows of the documents it annotated into parts of bounded size under
``<out>/.tmp-<run>/``, as it goes: one element per document, nothing grouped. Duplicate
document ids are found from ids and positions alone (a ``GroupByKey`` of small references,
never of text): the first record by input position keeps its rows, later ones are ``skipped``
when the run commits. Committing (``finalize``, on one worker, from part names and those
references only) costs what this run wrote, not the history of the output. Nothing an earlier
run committed is touched before this run is recorded as committed, so a crash at any moment
loses nothing:

0. what crashed runs left is recovered (``recover``, also the first step of every local run,
   so a rerun with nothing to do still repairs the output): parts of runs that never
   committed are removed, runs that committed are finished (steps 3 and 4); a local run,
   holding the output's lock, also removes the temporary folders of other runs;
1. this run's parts are moved to their final names (duplicates patched on the way);
2. the run is recorded as committed, with what it replaces: the rows of the shards it redid,
   in the earlier parts their markers name, and of every shard it wrote, in the parts of runs
   that committed but never marked their shards;
3. those rows are removed (``dropped``);
4. each ``<task>.tsv`` gets this run's rows appended (under a journal, so a retry does not
   append twice), or is rebuilt by concatenating the parts' TSV rows when step 3 had rows to
   remove (``tsv``);
5. then each shard done gets its marker, and the run is recorded as marked.

Until step 2 a crashed run's outputs are as if it never ran; from step 2 on, the next run
finishes steps 3 and 4 for it. A rerun redoes exactly the shards without a marker, and every
step is safe to retry.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.io import exports
from transforms.io.exports import ExportWriter
from transforms.io.progress import PROGRESS
from transforms.core.qualify import FLAGS
from transforms.core.records import SKIPPED, DocumentRows, Shard
from transforms.io.lock import OutputLock
from transforms.io.shards import Resume, write_marker
from transforms.io.storage import (ParquetSink, atomic_output, is_local, modified_time, move,
                                   open_output, read_table, write_table)

TSV_COLUMNS = ("filename", "label", "start_span", "end_span", "text")
TSV_HEADER = "\t".join(TSV_COLUMNS)
_NEEDS_QUOTES = frozenset('\t"\n\r')
DOCUMENTS_PER_PART = 10_000
RUNS, TSV_PARTS = "_runs", "_tsv"
COMMIT_WAIT_S = 3600.0  # how long a commit waits for another job's hold on the output
CLOCK_SKEW = timedelta(minutes=10)  # between the launching machine and the store
LOG = logging.getLogger("pipeline")

SPAN_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("task", pa.string()), ("label", pa.string()),
    ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
    ("score", pa.float32()), ("lang", pa.string()), ("source", pa.string()),
    *((column, kind) for flag in FLAGS
      for column, kind in ((flag, pa.bool_()), (f"{flag}_score", pa.float32()))),
])
DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
    ("lang_source", pa.string()), ("lang_score", pa.float32()), ("n_chars", pa.int64()),
    ("tasks", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("n_spans", pa.int64()), ("meta", pa.string()),
])
ERROR_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("key", pa.string()), ("source", pa.string()),
    ("task", pa.string()), ("stage", pa.string()), ("error", pa.string()),
])
SCHEMAS = {"spans": SPAN_SCHEMA, "documents": DOCUMENT_SCHEMA, "errors": ERROR_SCHEMA}


def tsv_field(value: object) -> str:
    """A TSV field, CSV-quoted when it holds a tab, a quote or a line break (``\\r`` too)."""
    s = str(value)
    if _NEEDS_QUOTES.isdisjoint(s):
        return s
    return '"' + s.replace('"', '""') + '"'


def tsv_line(row: Mapping[str, Any]) -> str:
    """A span row as one MultiClinAI TSV record (without the final newline)."""
    return "\t".join(
        tsv_field(v) for v in (row["doc_id"], row["label"], row["start"], row["end"], row["text"])
    )


def tsv_lines(spans: pa.Table, task: str) -> bytes:
    """The TSV records of one task's rows of a span table."""
    rows = spans.filter(pc.equal(spans["task"], task)).to_pylist()
    return "".join(tsv_line(r) + "\n" for r in rows).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Parts: what one worker writes, a bounded number of documents at a time


def part_file(root: str, kind: str, part: str) -> str:
    """The final path of one kind of a part (``part`` is ``<run>-<id>``)."""
    return posixpath.join(root, kind, f"{kind}-{part}.parquet")


def tsv_part_file(root: str, task: str, part: str) -> str:
    """The final path of one task's TSV rows of a part."""
    return posixpath.join(root, TSV_PARTS, task, f"{part}.tsv")


def run_of(part: str) -> str:
    """The run id of a part name ``<run>-<id>``."""
    return part.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Part:
    """A part written under the run's temporary folder: which documents' rows it holds."""

    name: str  # <run>-<id>
    tmp: str  # its temporary folder (URL)
    sources: tuple[str, ...]
    tasks: tuple[str, ...]  # tasks with TSV rows in it
    exports: tuple[str, ...] = ()  # the opt-in outputs it has files of


@dataclass(frozen=True)
class DocRef:
    """Where a document's rows are, without its text: enough to find duplicate ids and to
    patch a later duplicate's rows at commit."""

    doc_id: str
    source: str
    position: int
    key: str
    part: str
    row: int  # its row in the part's documents file
    spans: tuple[int, int]  # its rows in the part's spans file
    errors: tuple[int, int]
    status: str
    read_failed: bool
    counts: tuple[tuple[str, int], ...] = ()  # its spans per task/label


class PartWriter:
    """One part: a Parquet file per kind and the TSV rows per task, in a temporary folder."""

    def __init__(self, tmp: str, run_id: str, exports: tuple[str, ...] = ()) -> None:
        self.name = f"{run_id}-{uuid.uuid4().hex[:12]}"
        self.folder = posixpath.join(tmp, self.name)
        self._sinks = {kind: ParquetSink(posixpath.join(self.folder, f"{kind}.parquet"), schema)
                       for kind, schema in SCHEMAS.items()}
        self._exports = ExportWriter(self.folder, exports) if exports else None
        self._tsv: dict[str, Any] = {}
        self._sources: set[str] = set()
        self.documents = 0

    def add(self, rows: DocumentRows) -> DocRef:
        """Write one document's rows."""
        doc = rows.document
        row, _ = self._sinks["documents"].write([doc])
        spans = self._sinks["spans"].write(rows.spans)
        errors = self._sinks["errors"].write(rows.errors)
        for span in rows.spans:
            f = self._tsv.get(span["task"])
            if f is None:
                f = self._tsv[span["task"]] = open_output(
                    posixpath.join(self.folder, f"{span['task']}.tsv"), "wb")
            f.write((tsv_line(span) + "\n").encode("utf-8"))
        if self._exports is not None:
            self._exports.add(doc["source"], rows.extra)
        self._sources.add(doc["source"])
        self.documents += 1
        labels = Counter(f"{s['task']}/{s['label']}" for s in rows.spans)
        return DocRef(doc["doc_id"], doc["source"], rows.position, rows.key, self.name, row,
                      spans, errors, doc["status"], doc["reason"].startswith("read:"),
                      tuple(sorted(labels.items())))

    def close(self) -> Part:
        for sink in self._sinks.values():
            sink.close()
        for f in self._tsv.values():
            f.close()
        if self._exports is not None:
            self._exports.close()
        return Part(self.name, self.folder, tuple(sorted(self._sources)),
                    tuple(sorted(self._tsv)), self._exports.kinds if self._exports else ())


PARTS, COUNTS, TOTALS = "parts", "counts", "totals"


class _WriteParts(beam.DoFn):
    """``DocumentRows`` -> rows in parts (a new part every ``per_part`` documents); yields a
    ``DocRef`` per document, and per bundle its ``Part``s, its counts per shard and its
    share of the run's totals."""

    def __init__(self, tmp: str, run_id: str, exports: tuple[str, ...] = (),
                 per_part: int = DOCUMENTS_PER_PART) -> None:
        self._tmp, self._run_id, self._per_part = tmp, run_id, per_part
        self._exports = exports
        self._part: PartWriter | None = None
        self._shards: dict[str, Counter] = {}
        self._totals: Counter = Counter()

    def setup(self) -> None:
        PROGRESS.start()

    def start_bundle(self) -> None:
        self._part, self._shards, self._totals = None, {}, Counter()

    def process(self, rows: DocumentRows) -> Iterator:
        if self._part is not None and self._part.documents >= self._per_part:
            yield beam.pvalue.TaggedOutput(PARTS, self._part.close())
            self._part = None
        if self._part is None:
            self._part = PartWriter(self._tmp, self._run_id, self._exports)
        yield self._part.add(rows)
        PROGRESS.add(done=1)
        doc = rows.document
        shard = self._shards.setdefault(doc["source"], Counter())
        shard.update({"documents": 1, doc["status"]: 1, "spans": len(rows.spans)})
        self._totals.update(rows.counts)

    def finish_bundle(self) -> Iterator:
        out = beam.pvalue.TaggedOutput
        if self._part is not None:
            yield out(PARTS, GlobalWindows.windowed_value(self._part.close()))
        self._part = None
        for source, counts in self._shards.items():
            yield out(COUNTS, GlobalWindows.windowed_value((source, dict(counts))))
        if self._totals:
            yield out(TOTALS, GlobalWindows.windowed_value(dict(self._totals)))


# ---------------------------------------------------------------------------------------------
# Duplicate ids, from references only


@dataclass(frozen=True)
class Duplicate:
    """A later record with an id seen before: its rows are patched at commit."""

    ref: DocRef
    kept: str  # the key of the record that keeps the id


def duplicates(doc_id: str, refs: Iterable[DocRef]) -> Iterator[Duplicate]:
    """Of the records sharing an id, the first by input position keeps it; the others become
    ``skipped`` (their spans would be indistinguishable in the TSV). Records that could not
    be read stay ``failed``."""
    ordered = sorted(refs, key=lambda r: (r.source, r.position, r.key))
    for ref in ordered[1:]:
        Metrics.counter("documents", "duplicate_ids").inc()
        if not ref.read_failed:
            yield Duplicate(ref, ordered[0].key)


def duplicate_counts(dup: Duplicate) -> Iterator[tuple[str, dict[str, int]]]:
    """What a duplicate changes in its shard's counts (``source``) and in the run's totals
    (``""``); it also corrects the Beam counters."""
    ref = dup.ref
    Metrics.counter("documents", ref.status).dec()
    Metrics.counter("documents", SKIPPED).inc()
    spans = sum(n for _, n in ref.counts)
    for name, n in ref.counts:
        Metrics.counter("spans", name).dec(n)
    yield ref.source, {ref.status: -1, SKIPPED: 1, "spans": -spans}
    yield "", {f"documents/{ref.status}": -1, f"documents/{SKIPPED}": 1,
               **{f"spans/{name}": -n for name, n in ref.counts}}


def _patch(tables: dict[str, pa.Table], dups: Sequence[Duplicate]) -> dict[str, pa.Table]:
    """A part's tables with its duplicates' rows patched: spans and dead letters dropped, the
    document row ``skipped`` with the reason."""
    drop_spans = [i for d in dups for i in range(*d.ref.spans)]
    drop_errors = [i for d in dups for i in range(*d.ref.errors)]

    def without(table: pa.Table, rows: list[int]) -> pa.Table:
        if not rows:
            return table
        keep = pc.invert(pc.is_in(pa.array(range(table.num_rows)), pa.array(rows)))
        return table.filter(keep)

    documents = tables["documents"].to_pylist()
    for d in dups:
        documents[d.ref.row].update(status=SKIPPED, n_spans=0, tasks="",
                                    reason=f"duplicate id: kept the record at {d.kept}")
    return {"spans": without(tables["spans"], drop_spans),
            "errors": without(tables["errors"], drop_errors),
            "documents": pa.Table.from_pylist(documents, DOCUMENT_SCHEMA)}


# ---------------------------------------------------------------------------------------------
# Committing a run


def _put(fs, path: str, data: bytes) -> None:
    """Write bytes to ``path`` on ``fs`` atomically."""
    with atomic_output(fs, path) as f:
        f.write(data)


def _final_parts(fs, root: str) -> dict[str, list[str]]:
    """Every final part file (Parquet and TSV rows), by part name."""
    found: dict[str, list[str]] = {}
    for kind in SCHEMAS:
        prefix = f"{kind}-"
        for path in fs.glob(posixpath.join(root, kind, f"{kind}-*.parquet")):
            found.setdefault(posixpath.basename(path)[len(prefix):-len(".parquet")],
                             []).append(path)
    for path in fs.glob(posixpath.join(root, TSV_PARTS, "*", "*.tsv")):
        found.setdefault(posixpath.basename(path)[:-len(".tsv")], []).append(path)
    for part, path in exports.final_files(fs, root):
        found.setdefault(part, []).append(path)
    return found


def run_states(fs, root: str) -> dict[str, set[str]]:
    """Runs recorded under ``_runs/``, with their states (committed, dropped, tsv, marked)."""
    states: dict[str, set[str]] = {}
    folder = posixpath.join(root, RUNS)
    if fs.exists(folder):
        for path in fs.ls(folder, detail=False):
            run, _, state = posixpath.basename(path).rpartition(".")
            states.setdefault(run, set()).add(state)
    return states


def _record_state(fs, root: str, run_id: str, state: str, record: Mapping | None = None
                  ) -> None:
    _put(fs, posixpath.join(root, RUNS, f"{run_id}.{state}"), json.dumps(
        {"at": datetime.now(timezone.utc).isoformat(), **(record or {})}).encode())


def _marked_since(fs, root: str, since: datetime | None) -> set[str]:
    """Runs that wrote their shard markers at or after ``since`` (less the clock skew): a run
    that began reading its input at ``since`` could not see them, so it may have written the
    same shards."""
    folder = posixpath.join(root, RUNS)
    if since is None or not fs.exists(folder):
        return set()
    found = set()
    for info in fs.ls(folder, detail=True):
        run, _, state = posixpath.basename(info["name"]).rpartition(".")
        at = modified_time(info)
        if state == "marked" and (at is None or at >= since - CLOCK_SKEW):
            found.add(run)
    return found


def _commit_record(fs, root: str, run_id: str) -> dict:
    """A committed run's record: its parts' shards (``parts``) and the rows it replaces
    (``replaced``: ``{part: shards}``); ``{}`` for a run committed before records held them."""
    try:
        record = json.loads(fs.cat(posixpath.join(root, RUNS, f"{run_id}.committed")))
    except ValueError:  # an earlier version's record: a bare timestamp
        return {}
    return record if isinstance(record, dict) else {}


def _drop_sources(fs, root: str, part: str, redone: pa.Array) -> None:
    """Remove the rows of ``redone`` input shards from one committed part, its TSV rows and
    exports too; safe to repeat after a crash anywhere in it (the TSV rows are rewritten from
    the spans kept, whether or not this try removed any)."""
    spans = None
    for kind in SCHEMAS:
        path = part_file(root, kind, part)
        if not fs.exists(path):
            continue
        table = read_table(fs, path)
        kept = table.filter(pc.invert(pc.is_in(table["source"], value_set=redone)))
        if kind == "spans":
            spans = kept
        if kept.num_rows == table.num_rows:
            continue
        if kept.num_rows:
            write_table(fs, path, kept)
        else:
            fs.rm(path)
    exports.drop_sources(fs, root, part, redone)
    for path in fs.glob(tsv_part_file(root, "*", part)):  # every task's, this job's or not
        task = posixpath.basename(posixpath.dirname(path))
        lines = tsv_lines(spans, task) if spans is not None else b""
        if lines:
            _put(fs, path, lines)
        else:
            fs.rm(path)


def _commit_part(fs, root: str, part: Part, dups: Sequence[Duplicate]) -> None:
    """Move one of this run's parts to its final names, its duplicates patched; safe to retry
    (a file already moved is left as it is)."""
    tmp = fsspec.core.url_to_fs(part.tmp)[1]
    if part.exports:
        exports.commit(fs, tmp, root, part.name, part.exports, [d.ref.row for d in dups])
    sources = {kind: posixpath.join(tmp, f"{kind}.parquet") for kind in SCHEMAS}
    if dups and all(fs.exists(p) for p in sources.values()):
        tables = _patch({kind: read_table(fs, p) for kind, p in sources.items()}, dups)
        for kind, table in tables.items():
            write_table(fs, part_file(root, kind, part.name), table)
        for task in part.tasks:
            _put(fs, tsv_part_file(root, task, part.name), tsv_lines(tables["spans"], task))
        fs.rm(tmp, recursive=True)
        return
    for kind, src in sources.items():
        if fs.exists(src):
            move(fs, src, part_file(root, kind, part.name))
    for task in part.tasks:
        src = posixpath.join(tmp, f"{task}.tsv")
        if fs.exists(src):
            move(fs, src, tsv_part_file(root, task, part.name))


def _copy_into(fs, dst, paths: Iterable[str]) -> None:
    for path in paths:
        with fs.open(path, "rb") as src:
            while chunk := src.read(8 << 20):
                dst.write(chunk)


def _journal(root: str, task: str) -> str:
    return posixpath.join(root, TSV_PARTS, f"{task}.journal")


def _assemble_tsv(fs, root: str, tasks: Sequence[str], run_id: str, mine: Sequence[str],
                  rebuild: bool) -> None:
    """Each ``<task>.tsv``: this run's rows appended, or rebuilt from all parts' TSV rows."""
    for task in tasks:
        tsv, journal = posixpath.join(root, f"{task}.tsv"), _journal(root, task)
        pending = json.loads(fs.cat(journal)) if fs.exists(journal) else None
        if rebuild or not fs.exists(tsv) or (pending and pending["run"] != run_id):
            parts = sorted(fs.glob(posixpath.join(root, TSV_PARTS, task, "*.tsv")))
            with atomic_output(fs, tsv) as f:
                f.write((TSV_HEADER + "\n").encode("utf-8"))
                _copy_into(fs, f, parts)
            if pending:
                fs.rm(journal)
            continue
        if pending is None:
            pending = {"run": run_id, "size": fs.size(tsv)}
            _put(fs, journal, json.dumps(pending).encode())
        _append(fs, tsv, pending["size"],
                [tsv_part_file(root, task, p) for p in sorted(mine)
                 if fs.exists(tsv_part_file(root, task, p))])


def _append(fs, tsv: str, size: int, parts: Sequence[str]) -> None:
    """Append ``parts`` to ``tsv`` after its first ``size`` bytes (a retry rewinds first)."""
    if is_local(fs):
        with open(tsv, "r+b") as f:
            f.truncate(size)
            f.seek(size)
            _copy_into(fs, f, parts)
        return
    head = fs.cat_file(tsv, start=0, end=size)  # object stores cannot append: rewrite
    with atomic_output(fs, tsv) as f:
        f.write(head)
        _copy_into(fs, f, parts)


def _replacements(existing: Iterable[str], states: Mapping[str, set[str]], parts: Sequence[Part],
                  redone: Sequence[Shard], run_id: str, records: Mapping[str, dict]
                  ) -> dict[str, list[str]]:
    """The rows this run replaces in committed parts of other runs, as ``{part: sources}``:
    those of the shards it redid, in the earlier parts their index names; and those of every
    shard it wrote, in the parts of the runs in ``records``: runs that committed but did not
    mark their shards (so they are redone now), and runs that marked theirs after this run
    began reading (another job on the same output did the same shards), as their commit
    records list their parts' shards (a run recorded before records held them: all of its
    parts)."""
    replaced: dict[str, set[str]] = {}
    for shard in redone:
        for name in shard.earlier:
            if run_of(name) != run_id:
                replaced.setdefault(name, set()).add(shard.url)
    mine = {src for part in parts for src in part.sources}
    for run in records:
        held = records[run].get("parts")
        if held is None:
            held = {n: mine for n in existing if run_of(n) == run}
        for name, sources in held.items():
            if mine.intersection(sources):
                replaced.setdefault(name, set()).update(mine.intersection(sources))
    return {name: sorted(sources) for name, sources in sorted(replaced.items())}


def _complete(fs, root: str, run_id: str, tasks: Sequence[str], mine: Sequence[str] | None
              ) -> None:
    """Finish a committed run: remove the rows it replaces (its commit record names them), then
    bring each ``<task>.tsv`` up to date (``mine``: its parts, to append; None: rebuild). Safe
    to repeat, by the run itself or by any later one."""
    states = run_states(fs, root).get(run_id, set())
    record = _commit_record(fs, root, run_id)
    if "dropped" not in states:
        for name, sources in record.get("replaced", {}).items():
            _drop_sources(fs, root, name, pa.array(sources, pa.string()))
        _record_state(fs, root, run_id, "dropped")
    if "tsv" not in states:
        rebuild = mine is None or "replaced" not in record or bool(record["replaced"])
        if rebuild:  # rows went from parts: every task's TSV, this job's or an earlier one's
            tasks = output_tasks(fs, root, tasks)
        _assemble_tsv(fs, root, tasks, run_id, mine or (), rebuild)
        _record_state(fs, root, run_id, "tsv")
    for task in tasks:
        if fs.exists(_journal(root, task)):
            fs.rm(_journal(root, task))


def output_tasks(fs, root: str, tasks: Iterable[str]) -> list[str]:
    """``tasks`` and every task whose TSV rows the output holds (an earlier task file's too)."""
    return sorted({*tasks, *(posixpath.basename(p) for p in
                             fs.glob(posixpath.join(root, TSV_PARTS, "*")) if fs.isdir(p))})


def recover(out: str, tasks: Iterable[str] = (), current: str | None = None,
            temporary: bool = True) -> list[str]:
    """Undo or finish what crashed runs left over ``out``, as the next run's first step: the
    parts of runs that never committed are removed (nothing refers to them); runs that
    committed are finished (``_complete``: what they replace removed, the TSVs rebuilt); with
    ``temporary``, the temporary folders of runs other than ``current`` are removed (only
    where no other job can be writing: a local run's first step, under the output's lock).
    Returns what it did."""
    fs, root = fsspec.core.url_to_fs(out)
    if not fs.exists(root):
        return []
    done = []
    states = run_states(fs, root)
    for name, paths in _final_parts(fs, root).items():
        run = run_of(name)
        if run != current and "committed" not in states.get(run, ()):
            for path in paths:
                fs.rm(path)
            done.append(f"removed the uncommitted part {name}")
    for run, st in sorted(states.items()):
        if run != current and "committed" in st and "tsv" not in st:
            _complete(fs, root, run, output_tasks(fs, root, tasks), None)
            done.append(f"finished the commit of run {run}")
    for folder in (*SCHEMAS, f"{TSV_PARTS}/*", TSV_PARTS, RUNS, ""):
        for path in fs.glob(posixpath.join(root, folder, ".*.inprogress")):
            fs.rm(path)  # a write cut off by a kill (hidden: no reader took it for data)
    for path in fs.glob(posixpath.join(root, ".tmp-*")) if temporary else ():
        if posixpath.basename(path) != f".tmp-{current}":
            fs.rm(path, recursive=True)
            done.append(f"removed {posixpath.basename(path)}")
    return done


def finalize(parts: Sequence[Part], out: str, tasks: Sequence[str], tmp: str, run_id: str,
             dups: Sequence[Duplicate], redone: Sequence[Shard], started: datetime | None = None,
             lock_wait_s: float = COMMIT_WAIT_S) -> int:
    """Commit this run (see the module docstring) under the output's lock (re-entered by a
    local run, which holds it; taken by a cluster job, waiting up to ``lock_wait_s`` for
    another job's commit); safe to retry. ``started``: when the run began reading (the rows
    of runs that marked the same shards since are replaced too). Returns its part count."""
    with OutputLock(out, run_id, wait_s=lock_wait_s):
        return _finalize(parts, out, tasks, tmp, run_id, dups, redone, started)


def _finalize(parts: Sequence[Part], out: str, tasks: Sequence[str], tmp: str, run_id: str,
              dups: Sequence[Duplicate], redone: Sequence[Shard], started: datetime | None
              ) -> int:
    fs, root = fsspec.core.url_to_fs(out)
    # other jobs' temporary folders may be in use (a cluster job does not hold the output)
    for line in recover(out, tasks, current=run_id, temporary=False):
        LOG.info("output: %s (an earlier run crashed)", line)
    states = run_states(fs, root)
    existing = set(_final_parts(fs, root))
    by_part: dict[str, list[Duplicate]] = {}
    for d in dups:
        by_part.setdefault(d.ref.part, []).append(d)
    for part in parts:
        _commit_part(fs, root, part, by_part.get(part.name, ()))
    if "committed" not in states.get(run_id, ()):
        recent = _marked_since(fs, root, started)
        records = {run: _commit_record(fs, root, run) for run, st in states.items()
                   if run != run_id and "committed" in st
                   and ("marked" not in st or run in recent)}
        _record_state(fs, root, run_id, "committed", {
            "parts": {p.name: list(p.sources) for p in parts},
            "replaced": _replacements(existing, states, parts, redone, run_id, records)})
    _complete(fs, root, run_id, tasks, [p.name for p in parts])
    for kind, schema in SCHEMAS.items():  # an empty table still says what its columns are
        if not fs.glob(posixpath.join(root, kind, "*.parquet")):
            write_table(fs, part_file(root, kind, f"{run_id}-empty"), schema.empty_table())
    tmp_root = fsspec.core.url_to_fs(tmp)[1]
    if fs.exists(tmp_root):
        fs.rm(tmp_root, recursive=True)
    return len(parts)


class _WriteMarker(beam.DoFn):
    """(url, {shard, counts, parts}) -> the shard's marker, once the outputs are committed."""

    def __init__(self, resume: Resume, run_id: str) -> None:
        self._resume, self._run_id = resume, run_id

    def process(self, element, committed: int) -> Iterator[str]:
        _, grouped = element
        counts: Counter = Counter()
        for c in grouped["counts"]:
            counts.update(c)
        for shard in grouped["shard"]:
            Metrics.counter("shards", "completed").inc()
            yield write_marker(shard, dict(counts), grouped["parts"], self._resume,
                               self._run_id, datetime.now(timezone.utc).isoformat())


def _merge(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


class WriteOutputs(beam.PTransform):
    """Writes each document's rows into parts, commits them with this run's duplicate ids
    patched, marks the shards of this run complete; returns the run's totals (one dict) once
    every shard is marked."""

    def __init__(self, tasks: Iterable[str], resume: Resume, run_id: str,
                 exports: tuple[str, ...] = (), started: datetime | None = None) -> None:
        super().__init__()
        self._exports, self._started = exports, started
        self._out = resume.output.rstrip("/")
        self._tasks = sorted(tasks)
        self._resume, self._run_id = resume, run_id
        self._tmp = f"{self._out}/.tmp-{run_id}"

    def expand(self, pcolls):
        rows, shards = pcolls
        written = rows | "WriteParts" >> beam.ParDo(
            _WriteParts(self._tmp, self._run_id, self._exports)).with_outputs(
                PARTS, COUNTS, TOTALS, main="refs")
        dups = (
            written.refs
            | "ById" >> beam.WithKeys(lambda r: r.doc_id)
            | "SameId" >> beam.GroupByKey()
            | "Duplicates" >> beam.FlatMapTuple(duplicates)
        )
        corrections = dups | "DuplicateCounts" >> beam.FlatMap(duplicate_counts)
        counts = (
            (written[COUNTS], corrections | "ShardCorrections" >> beam.Filter(lambda kv: kv[0]))
            | "AllCounts" >> beam.Flatten()
            | "CountsPerShard" >> beam.CombinePerKey(_merge)
        )
        # only the shards whose earlier rows must go reach the commit (not every shard done)
        redone = shards | "Redone" >> beam.Filter(lambda s: bool(s.earlier))
        committed = (
            written[PARTS]
            | "PartList" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(finalize, self._out, self._tasks, self._tmp, self._run_id,
                                     beam.pvalue.AsList(dups), beam.pvalue.AsList(redone),
                                     self._started)
        )
        parts_of = written[PARTS] | "PartSources" >> beam.FlatMap(
            lambda p: [(s, p.name) for s in p.sources])
        marked = (
            {"shard": shards | "KeyShards" >> beam.WithKeys(lambda s: s.url),
             "counts": counts, "parts": parts_of}
            | "ByShard" >> beam.CoGroupByKey()
            | "MarkComplete" >> beam.ParDo(_WriteMarker(self._resume, self._run_id),
                                           beam.pvalue.AsSingleton(committed))
        )
        totals = (
            (written[TOTALS], corrections | "RunCorrections" >> beam.Filter(lambda kv: not kv[0])
             | beam.Map(lambda kv: kv[1]))
            | "AllTotals" >> beam.Flatten()
            | "RunTotals" >> beam.CombineGlobally(_merge)
        )
        return (
            marked
            | "MarkerCount" >> beam.combiners.Count.Globally()
            | "Marked" >> beam.Map(_mark_run, self._out, self._run_id,
                                   beam.pvalue.AsSingleton(committed))
            | "Totals" >> beam.Map(lambda _, totals: totals, beam.pvalue.AsSingleton(totals))
        )


def _mark_run(markers: int, out: str, run_id: str, committed: int) -> int:
    """Record that every shard of the run has its marker."""
    fs, root = fsspec.core.url_to_fs(out)
    _record_state(fs, root, run_id, "marked")
    return markers
