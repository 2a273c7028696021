"""Committing a run's parts over an output, atomically, on any fsspec filesystem (no Beam).

Each worker writes the rows of the documents it annotated into parts (``parts``) under
``<out>/.tmp-<run>/``. Duplicate document ids are found from ids and positions alone
(``settle``): the first record by input position keeps its rows, later ones are ``skipped``
when the run commits, and each record is counted once that is decided. Committing
(``finalize``, on one worker, from part names and those references only) costs what this run
wrote, not the history of the output. Nothing an earlier run committed is touched before this
run is recorded as committed, so a crash at any moment loses nothing:

0. what crashed runs left is recovered (``recover``, also the first step of every local run,
   so a rerun with nothing to do still repairs the output): parts of runs that never
   committed are removed, runs that committed are finished (steps 3 and 4); a local run,
   holding the output's lock, also removes the temporary folders of other runs;
1. this run's parts are moved to their final names (duplicates skipped on the way);
2. the run is recorded as committed (``_runs/<run>.committed``), with what it replaces: the
   rows of the shards it redid, in the earlier parts their markers name, and of every shard it
   wrote, in the parts of runs that committed but never marked their shards;
3. those rows are removed, by the parts' indexes (``dropped``);
4. each output completes (the TSV: ``<task>.tsv`` appended, or rebuilt when step 3 removed
   rows) (``completed``);
5. then each shard done gets its marker, and the run is recorded as ``marked``.

Until step 2 a crashed run's outputs are as if it never ran; from step 2 on, the next run
finishes steps 3 and 4 for it. A rerun redoes exactly the shards without a marker, and every
step is safe to retry.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.core.records import SKIPPED, Shard
from transforms.io.lock import OutputLock
from transforms.io.storage import atomic_output, modified_time
from transforms.outputs import every
from transforms.outputs.parts import INDEX, DocRef, Part, Place, final_index_files, rewrite

RUNS = "_runs"
COMMIT_WAIT_S = 3600.0  # how long a commit waits for another job's hold on the output
CLOCK_SKEW = timedelta(minutes=10)  # between the launching machine and the store
LOG = logging.getLogger("pipeline")


class LayoutError(RuntimeError):
    """An output written by an earlier version of the pipeline, whose parts have no index."""


def run_of(part: str) -> str:
    """The run id of a part name ``<run>-<id>``."""
    return part.rsplit("-", 1)[0]


# ---------------------------------------------------------------------------------------------
# Duplicate ids and counts, from references only


@dataclass(frozen=True)
class Duplicate:
    """A later record with an id seen before: its rows are skipped at commit."""

    ref: DocRef
    kept: str  # the key of the record that keeps the id

    @property
    def reason(self) -> str:
        return f"duplicate id: kept the record at {self.kept}"


@dataclass(frozen=True)
class Settled:
    """A record once its id's records are known: what it adds to the counts, and whether it
    is a later duplicate whose rows are skipped."""

    ref: DocRef
    counts: Mapping[str, int]
    duplicate: Duplicate | None = None

    @property
    def status(self) -> str:
        """The record's final state."""
        return SKIPPED if self.duplicate is not None else self.ref.status

    def shard_counts(self) -> dict[str, int]:
        """What it adds to its shard's completion marker."""
        spans = sum(v for k, v in self.counts.items() if k.startswith("spans/"))
        return {"documents": 1, self.status: 1, "spans": spans}


def settle(doc_id: str, refs: Iterable[DocRef]) -> Iterator[Settled]:
    """Of the records sharing an id, the first by input position keeps it; the others are
    counted as ``skipped``, with no spans, and their rows skipped (their spans would be
    indistinguishable in the TSV). Records that could not be read stay ``failed``."""
    ordered = sorted(refs, key=lambda r: (r.source, r.position, r.key))
    yield Settled(ordered[0], dict(ordered[0].counts))
    for ref in ordered[1:]:
        counts = Counter(dict(ref.counts))
        counts["documents/duplicate_ids"] += 1
        if ref.read_failed:
            yield Settled(ref, dict(counts))
            continue
        for name in [n for n in counts if n.startswith("spans/")]:
            del counts[name]
        counts[f"documents/{ref.status}"] -= 1
        counts[f"documents/{SKIPPED}"] += 1
        yield Settled(ref, {k: v for k, v in counts.items() if v},
                      Duplicate(ref, ordered[0].key))


# ---------------------------------------------------------------------------------------------
# The output's run records


def run_states(fs, root: str) -> dict[str, set[str]]:
    """Runs recorded under ``_runs/``, with their states (committed, dropped, completed,
    marked)."""
    states: dict[str, set[str]] = {}
    folder = posixpath.join(root, RUNS)
    if fs.exists(folder):
        for path in fs.ls(folder, detail=False):
            run, _, state = posixpath.basename(path).rpartition(".")
            states.setdefault(run, set()).add(state)
    return states


def record_state(fs, root: str, run_id: str, state: str, record: Mapping | None = None
                 ) -> None:
    """Record that run ``run_id`` reached ``state``."""
    with atomic_output(fs, posixpath.join(root, RUNS, f"{run_id}.{state}")) as f:
        f.write(json.dumps({"at": datetime.now(timezone.utc).isoformat(),
                            **(record or {})}).encode())


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
    (``replaced``: ``{part: shards}``)."""
    return json.loads(fs.cat(posixpath.join(root, RUNS, f"{run_id}.committed")))


def _final_parts(fs, root: str) -> dict[str, list[str]]:
    """Every committed file of every output (and the indexes), by part name."""
    found: dict[str, list[str]] = {}
    for out in every():
        for part, path in out.final_files(fs, root):
            found.setdefault(part, []).append(path)
    for part, path in final_index_files(fs, root):
        found.setdefault(part, []).append(path)
    return found


def check_layout(out: str) -> None:
    """An output with a committed part that has no index was written by an earlier version of
    the pipeline: its rows could not be replaced by a rerun. A set-up error, before any
    reading. Not so a part of a run killed while committing: a run that never committed
    leaves parts for ``recover`` to remove, and a part being rewritten keeps its index aside
    (``_dropping/``) until it is back."""
    fs, root = fsspec.core.url_to_fs(out)
    if not fs.exists(posixpath.join(root, RUNS)):
        return
    committed = {run for run, st in run_states(fs, root).items() if "committed" in st}
    indexed = {part for part, _ in final_index_files(fs, root)}
    for part in _final_parts(fs, root):
        if (run_of(part) in committed and part not in indexed and not part.endswith("-empty")
                and not fs.exists(_dropping(root, part).index)):
            raise LayoutError(f"{out} was written by an earlier version of the pipeline (part "
                              f"{part} has no _index/ file): write to a new --output")


# ---------------------------------------------------------------------------------------------
# Committing


def drop_sources(fs, root: str, part: str, redone: pa.Array) -> None:
    """Remove the rows of the ``redone`` input shards from a committed part, every output's.
    Safe to repeat after a crash anywhere in it: the kept rows are written aside
    (``_dropping/``), the originals removed (the index last), then the kept rows moved into
    their place."""
    final, staged = Place(root=root, part=part), _dropping(root, part)
    if fs.exists(final.index):
        rewrite(fs, final, staged, lambda t: pc.is_in(t["source"], value_set=redone)
                .to_numpy(zero_copy_only=False))
    if fs.exists(staged.index):
        rewrite(fs, staged, final, _nothing)


def _dropping(root: str, part: str) -> Place:
    """Where ``drop_sources`` keeps a part's kept rows while it rewrites it."""
    return Place(folder=posixpath.join(root, "_dropping", part))


def _nothing(index: pa.Table) -> np.ndarray:
    return np.zeros(index.num_rows, dtype=bool)


def commit_part(fs, root: str, part: Part, dups: Sequence[Duplicate]) -> None:
    """Move one of this run's parts to its final names, its duplicates skipped; safe to retry
    (what was moved stays)."""
    tmp = Place(folder=fsspec.core.url_to_fs(part.tmp)[1])
    if not fs.exists(tmp.index):
        return  # moved by an earlier try
    rewrite(fs, tmp, Place(root=root, part=part.name), _nothing,
            {d.ref.row: d.reason for d in dups})


def _replacements(parts: Sequence[Part], redone: Sequence[Shard], run_id: str,
                  records: Mapping[str, dict]) -> dict[str, list[str]]:
    """The rows this run replaces in committed parts of other runs, as ``{part: sources}``:
    those of the shards it redid, in the earlier parts their index names; and those of every
    shard it wrote, in the parts of the runs in ``records``: runs that committed but did not
    mark their shards (so they are redone now), and runs that marked theirs after this run
    began reading (another job on the same output did the same shards), as their commit
    records list their parts' shards."""
    replaced: dict[str, set[str]] = {}
    for shard in redone:
        for name in shard.earlier:
            if run_of(name) != run_id:
                replaced.setdefault(name, set()).add(shard.url)
    mine = {src for part in parts for src in part.sources}
    for record in records.values():
        for name, sources in record["parts"].items():
            if mine.intersection(sources):
                replaced.setdefault(name, set()).update(mine.intersection(sources))
    return {name: sorted(sources) for name, sources in sorted(replaced.items())}


def _complete(fs, root: str, run_id: str, tasks: Sequence[str], mine: Sequence[str] | None
              ) -> None:
    """Finish a committed run: remove the rows it replaces (its commit record names them),
    then complete each output (``mine``: its parts, to add; None: rebuild). Safe to repeat,
    by the run itself or by any later one."""
    states = run_states(fs, root).get(run_id, set())
    record = _commit_record(fs, root, run_id)
    if "dropped" not in states:
        for name, sources in record.get("replaced", {}).items():
            drop_sources(fs, root, name, pa.array(sources, pa.string()))
        record_state(fs, root, run_id, "dropped")
    if "completed" not in states:
        rebuild = mine is None or "replaced" not in record or bool(record["replaced"])
        for out in every():
            out.complete(fs, root, run_id, tasks, None if rebuild else mine)
        record_state(fs, root, run_id, "completed")
    for out in every():
        out.completed(fs, root, tasks)


def recover(out: str, tasks: Iterable[str] = (), current: str | None = None,
            temporary: bool = True) -> list[str]:
    """Undo or finish what crashed runs left over ``out``, as the next run's first step: the
    parts of runs that never committed are removed (nothing refers to them); runs that
    committed are finished (``_complete``: what they replace removed, the outputs completed);
    with ``temporary``, the temporary folders of runs other than ``current`` are removed (only
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
        if run != current and "committed" in st and "completed" not in st:
            _complete(fs, root, run, sorted(tasks), None)
            done.append(f"finished the commit of run {run}")
    folders = {f.folder.format(stream="*") for o in every() for f in o.files}
    folders |= {posixpath.dirname(f) for f in folders}
    for folder in (*folders, INDEX.folder, RUNS, ""):
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
    by_part: dict[str, list[Duplicate]] = {}
    for d in dups:
        by_part.setdefault(d.ref.part, []).append(d)
    for part in parts:
        commit_part(fs, root, part, by_part.get(part.name, ()))
    if "committed" not in states.get(run_id, ()):
        recent = _marked_since(fs, root, started)
        records = {run: _commit_record(fs, root, run) for run, st in states.items()
                   if run != run_id and "committed" in st
                   and ("marked" not in st or run in recent)}
        record_state(fs, root, run_id, "committed", {
            "parts": {p.name: list(p.sources) for p in parts},
            "replaced": _replacements(parts, redone, run_id, records)})
    _complete(fs, root, run_id, tasks, [p.name for p in parts])
    tmp_root = fsspec.core.url_to_fs(tmp)[1]
    if fs.exists(tmp_root):
        fs.rm(tmp_root, recursive=True)
    return len(parts)


def mark_run(out: str, run_id: str) -> None:
    """Record that every shard of the run has its marker."""
    fs, root = fsspec.core.url_to_fs(out)
    record_state(fs, root, run_id, "marked")
