"""Committing a run's parts over an output, atomically, on any fsspec filesystem (no Beam).

Each worker writes the rows of the documents it annotated into parts (``parts``) under
``<out>/.tmp-<run>/``. Duplicate document ids are found from ids and positions alone
(``settle``): the first record by input position keeps its rows, later ones are ``skipped``
when the run commits, and each record is counted once that is decided. Committing
(``finalize``, on one worker, from part names and those references only) costs what this run
wrote, not the history of the output.

A run owns the output from its token on (``own_output``: a local run when it starts, a
cluster job when it is launched; ``transforms.io.fence``), and only the newest owner commits:

0. what earlier runs left is recovered (``recover``, also the first step of every local run,
   so a rerun with nothing to do still repairs the output): runs that committed are finished
   (steps 2-4); the temporary folders of runs that did not are removed, since an older token
   can never commit again;
1. the run's commit is recorded as the next entry of the output's log, created only where no
   newer owner's entry came first: the one step that decides, checked by the store. It names
   the run's parts, the duplicates to skip, and what it replaces: the rows of the shards it
   redid, in the earlier parts their markers name, and of every shard it wrote, in the parts of
   the runs that had committed without marking their shards when it took its token;
2. those rows are removed, by the parts' indexes (``dropped``);
3. the run's parts are moved to their final names, duplicates skipped (``moved``), so no reader
   of a folder ever sees a replaced row beside its replacement;
4. each output completes (the TSV: ``<task>.tsv`` rewritten with the run's rows added, or
   rebuilt when step 2 removed rows) (``completed``);
5. then each shard done gets its marker, and the run is recorded as ``marked``.

Before step 1 a run's outputs are invisible and a crash leaves them as if it never ran; from
step 1 on, the next owner finishes steps 2-4 for it. Every step is safe to retry. A run that a
newer owner fenced out stops (``Fenced``) with nothing of it visible.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.core.records import SKIPPED, Shard
from transforms.io import fence
from transforms.io.lock import LOCK, OutputLock
from transforms.io.storage import atomic_output
from transforms.outputs import every
from transforms.outputs.parts import INDEX, DocRef, Part, Place, final_index_files, rewrite

RUNS = "_runs"
COMMIT_WAIT_S = 3600.0  # how long a commit waits for another job's hold on the output
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
    """Runs recorded under ``_runs/`` with their states (committed, dropped, moved, completed,
    marked), and the runs whose commit is in the log (committed)."""
    states: dict[str, set[str]] = {}
    folder = posixpath.join(root, RUNS)
    if fs.exists(folder):
        for path in fs.ls(folder, detail=False):
            run, _, state = posixpath.basename(path).rpartition(".")
            states.setdefault(run, set()).add(state)
    for entry in fence.entries(fs, root):
        if entry.kind == fence.COMMIT:
            states.setdefault(entry.run, set()).add("committed")
    return states


def record_state(fs, root: str, run_id: str, state: str, record: Mapping | None = None
                 ) -> None:
    """Record that run ``run_id`` reached ``state``."""
    with atomic_output(fs, posixpath.join(root, RUNS, f"{run_id}.{state}")) as f:
        f.write(json.dumps({"at": datetime.now(timezone.utc).isoformat(),
                            **(record or {})}).encode())


def _commit_record(fs, root: str, run_id: str) -> dict:
    """A committed run's record: its parts' shards (``parts``), the rows it replaces
    (``replaced``: ``{part: shards}``), its temporary folder (``tmp``) and its duplicates'
    rows to skip (``skipped``: ``{part: {row: reason}}``); from ``_runs/`` or the log."""
    try:
        return json.loads(fs.cat(posixpath.join(root, RUNS, f"{run_id}.committed")))
    except FileNotFoundError:
        for entry in fence.entries(fs, root):
            if entry.kind == fence.COMMIT and entry.run == run_id:
                return dict(entry.record)
        raise


def own_output(out: str, run_id: str, cluster: bool = False) -> int:
    """Make run ``run_id`` the owner of ``out`` (``fence.take``); its token. Its entry also
    names the runs that had committed without marking their shards: this run may redo their
    shards, so its commit replaces their rows of them."""
    fs, root = fsspec.core.url_to_fs(out)

    def info() -> dict:
        states = run_states(fs, root)
        return {"cluster": cluster, "unmarked": sorted(
            run for run, st in states.items() if "committed" in st and "marked" not in st)}

    return fence.take(fs, root, run_id, info)


def _owner_entry(fs, root: str, run_id: str, token: int) -> fence.Entry:
    """The log entry of ``run_id``'s token (``Fenced`` where it is gone: only a newer owner
    removes it)."""
    for entry in fence.entries(fs, root, token - 1):
        if entry.seq == token and entry.run == run_id:
            return entry
    fence.check_owner(fs, root, run_id, token)
    raise fence.Fenced(f"run {run_id}: log entry {token} is not its token")


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
    reading. Not so a part of a run killed while committing: a run that has not completed its
    commit is finished by ``recover`` (its parts may be half moved), and a part being rewritten
    keeps its index aside (``_dropping/``) until it is back."""
    fs, root = fsspec.core.url_to_fs(out)
    if not fs.exists(posixpath.join(root, RUNS)):
        return
    committed = {run for run, st in run_states(fs, root).items() if "completed" in st}
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


def commit_part(fs, root: str, name: str, tmp: str, skipped: Mapping[int, str]) -> None:
    """Move one committed part from its temporary folder ``tmp`` to its final names, the
    ``skipped`` rows left out (by index row: the reason); safe to retry (what was moved
    stays). A part in neither place was lost: an error, never taken for moved."""
    staged = Place(folder=posixpath.join(tmp, name))
    if not fs.exists(staged.index):
        if fs.exists(Place(root=root, part=name).index):
            return  # moved by an earlier try
        raise FileNotFoundError(f"part {name} of a committed run is neither in {tmp} nor in "
                                "place")
    rewrite(fs, staged, Place(root=root, part=name), _nothing, skipped)


def _replacements(parts: Sequence[Part], redone: Sequence[Shard], run_id: str,
                  records: Mapping[str, dict]) -> dict[str, list[str]]:
    """The rows this run replaces in committed parts of other runs, as ``{part: sources}``:
    those of the shards it redid, in the earlier parts their index names; and those of every
    shard it wrote, in the parts of the runs in ``records`` (runs that had committed without
    marking their shards when this run took its token: it may have redone them), as their
    commit records list their parts' shards."""
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


Owner = tuple[str, int]  # the run doing the work and its token


def _complete(fs, root: str, run_id: str, tasks: Sequence[str], mine: Sequence[str] | None,
              owner: Owner) -> None:
    """Finish a committed run: record its commit under ``_runs/``, remove the rows it
    replaces, move its parts into place, then complete each output (``mine``: its parts, to
    add; None: rebuild). Done by ``owner``, which must still own the output at each step (a
    newer owner finishes it instead). Safe to repeat, by the run itself or by any later one."""
    states = run_states(fs, root).get(run_id, set())
    record = _commit_record(fs, root, run_id)
    if not fs.exists(posixpath.join(root, RUNS, f"{run_id}.committed")):
        record_state(fs, root, run_id, "committed", record)
    if "dropped" not in states:
        for name, sources in record.get("replaced", {}).items():
            fence.check_owner(fs, root, *owner)
            drop_sources(fs, root, name, pa.array(sources, pa.string()))
        record_state(fs, root, run_id, "dropped")
    if "moved" not in states and "tmp" in record:  # (parts moved before the log: in place)
        skipped = record.get("skipped", {})
        for name in record["parts"]:
            fence.check_owner(fs, root, *owner)
            commit_part(fs, root, name, record["tmp"],
                        {int(row): why for row, why in skipped.get(name, {}).items()})
        record_state(fs, root, run_id, "moved")
    if "completed" not in states:
        fence.check_owner(fs, root, *owner)
        rebuild = mine is None or bool(record.get("replaced", True))
        for out in every():
            out.complete(fs, root, run_id, tasks, None if rebuild else mine)
        record_state(fs, root, run_id, "completed")
    for out in every():
        out.completed(fs, root, tasks)
    if "tmp" in record and fs.exists(record["tmp"]):
        fs.rm(record["tmp"], recursive=True)


def recover(out: str, tasks: Iterable[str], current: str, token: int | None) -> list[str]:
    """Undo or finish what earlier runs left over ``out``, by run ``current``, the output's
    owner from ``token`` on (``Fenced`` where a newer job owns it): runs that committed are
    finished (``_complete``); the temporary folders of the others are removed (a run with an
    older token can never commit), and any part of theirs in place (left by a version before
    the log). Returns what it did; with no ``token``, what there is to do, doing nothing (a run
    with nothing to do takes no token where there is nothing to recover)."""
    fs, root = fsspec.core.url_to_fs(out)
    if not fs.exists(root):
        return []
    owner = (current, token)
    act = token is not None
    if act:
        fence.check_owner(fs, root, *owner)
    done = []
    states = run_states(fs, root)
    for run, st in sorted(states.items()):
        if run != current and "committed" in st and "completed" not in st:
            if act:
                _complete(fs, root, run, sorted(tasks), None, owner)
            done.append(f"finished the commit of run {run}")
    for name, paths in _final_parts(fs, root).items():
        run = run_of(name)
        if run != current and "committed" not in states.get(run, ()):
            for path in paths if act else ():
                fs.rm(path)
            done.append(f"removed the uncommitted part {name}")
    folders = {f.folder.format(stream="*") for o in every() for f in o.files}
    folders |= {posixpath.dirname(f) for f in folders}
    for folder in (*folders, INDEX.folder, RUNS, ""):
        for path in fs.glob(posixpath.join(root, folder, ".*.inprogress")):
            if not path.endswith(f"/.{LOCK}.inprogress"):  # a live holder's renewal
                if act:  # a write cut off by a kill (hidden: no reader took it for data)
                    fs.rm(path)
                done.append(f"removed {posixpath.relpath(path, root)}")
    for path in fs.glob(posixpath.join(root, ".tmp-*")):
        if posixpath.basename(path) != f".tmp-{current}":
            if act:
                fence.check_owner(fs, root, *owner)
                fs.rm(path, recursive=True)
            done.append(f"removed {posixpath.basename(path)}")
    return done


def finalize(parts: Sequence[Part], out: str, tasks: Sequence[str], tmp: str, run_id: str,
             dups: Sequence[Duplicate], redone: Sequence[Shard], token: int,
             lock_wait_s: float = COMMIT_WAIT_S) -> int:
    """Commit this run (see the module docstring), the output's owner from ``token`` on, under
    the output's lock (re-entered by a local run, which holds it; taken by a cluster job,
    waiting up to ``lock_wait_s`` for another job's commit); safe to retry. Returns its part
    count. Raises ``Fenced``, with nothing of the run visible, where a newer job owns the
    output (its temporary folder then removed: it holds notes, and will never be committed)."""
    fs, root = fsspec.core.url_to_fs(out)
    try:
        fence.check_owner(fs, root, run_id, token)  # before waiting for a lock: no use
        with OutputLock(out, run_id, wait_s=lock_wait_s):
            return _finalize(parts, out, tasks, tmp, run_id, dups, redone, token)
    except fence.Fenced:
        tmp_root = fsspec.core.url_to_fs(tmp)[1]
        if not committed(out, run_id) and fs.exists(tmp_root):  # (committed: the newer
            fs.rm(tmp_root, recursive=True)  # owner moves its parts from there)
        raise


def _finalize(parts: Sequence[Part], out: str, tasks: Sequence[str], tmp: str, run_id: str,
              dups: Sequence[Duplicate], redone: Sequence[Shard], token: int) -> int:
    fs, root = fsspec.core.url_to_fs(out)
    for line in recover(out, tasks, run_id, token):
        LOG.info("output: %s (an earlier run stopped)", line)
    if "committed" not in run_states(fs, root).get(run_id, ()):
        unmarked = _owner_entry(fs, root, run_id, token).record.get("unmarked", ())
        records = {run: _commit_record(fs, root, run) for run in unmarked if run != run_id}
        skipped: dict[str, dict[str, str]] = {}
        for d in dups:
            skipped.setdefault(d.ref.part, {})[str(d.ref.row)] = d.reason
        fence.commit(fs, root, run_id, token, {
            "parts": {p.name: list(p.sources) for p in parts},
            "tmp": fsspec.core.url_to_fs(tmp)[1], "skipped": skipped,
            "replaced": _replacements(parts, redone, run_id, records)})
    _complete(fs, root, run_id, tasks, [p.name for p in parts], (run_id, token))
    _prune_log(fs, root, token)
    return len(parts)


def _prune_log(fs, root: str, token: int) -> None:
    """Keep the log short: the entries before ``token`` go, their commits recorded under
    ``_runs/`` first (each was finished by ``recover`` before this run's commit)."""
    for entry in fence.entries(fs, root):
        if entry.seq >= token:
            break
        if entry.kind == fence.COMMIT and not fs.exists(
                posixpath.join(root, RUNS, f"{entry.run}.committed")):
            record_state(fs, root, entry.run, "committed", entry.record)
    fence.prune(fs, root, token)


def committed(out: str, run_id: str) -> bool:
    """Whether run ``run_id``'s commit over ``out`` was recorded (False where the store cannot
    say)."""
    try:
        fs, root = fsspec.core.url_to_fs(out)
        return "committed" in run_states(fs, root).get(run_id, ())
    except OSError:
        return False


def commit_state(out: str) -> tuple[int, tuple[str, ...]]:
    """Where ``out``'s commits stand: the log's last entry number (it grows with every owner
    and commit) and the runs whose commit is recorded but not complete (their rows are being
    replaced and moved: a reader of the folders may miss some). Two equal states with no run in
    progress bracket a read that saw exactly the committed rows."""
    fs, root = fsspec.core.url_to_fs(out)
    last = max(fence.numbers(fs, root), default=0)
    return last, tuple(sorted(run for run, st in run_states(fs, root).items()
                              if "committed" in st and "completed" not in st))


def mark_run(out: str, run_id: str) -> None:
    """Record that every shard of the run has its marker."""
    fs, root = fsspec.core.url_to_fs(out)
    record_state(fs, root, run_id, "marked")
