"""The write stage: each document's rows into parts, then one commit, then the shards' markers.

What is written (one module per output: ``transforms.outputs``) and how a run commits over an
output, crash-safe (``transforms.outputs.commit``), live below; this module wires them into
the job: parts written as documents arrive (one element per document, nothing grouped),
duplicate ids found from small references (a ``GroupByKey`` of ids and positions, never of
text), each record counted once that is decided, the parts committed on one worker, then each
shard marked complete.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.core.records import DocumentRows
from transforms.io.progress import PROGRESS
from transforms.io.shards import Resume, write_marker
from transforms.outputs import enabled
from transforms.outputs.commit import Settled, finalize, mark_run, settle
from transforms.outputs.parts import DOCUMENTS_PER_PART, PartWriter

PARTS = "parts"
# the counts the duplicate rule decides, published once it has (the others where they are made)
DECIDED = ("documents/", "spans/")


class _WriteParts(beam.DoFn):
    """``DocumentRows`` -> rows in parts (a new part every ``per_part`` documents); yields a
    ``DocRef`` per document, and per bundle its ``Part``s."""

    def __init__(self, tmp: str, run_id: str, outputs: tuple[str, ...] = (),
                 per_part: int = DOCUMENTS_PER_PART) -> None:
        self._tmp, self._run_id, self._per_part = tmp, run_id, per_part
        self._opt_in = outputs
        self._part: PartWriter | None = None

    def setup(self) -> None:
        PROGRESS.start()

    def start_bundle(self) -> None:
        self._part = None

    def process(self, rows: DocumentRows) -> Iterator:
        if self._part is not None and self._part.documents >= self._per_part:
            yield beam.pvalue.TaggedOutput(PARTS, self._part.close())
            self._part = None
        if self._part is None:
            self._part = PartWriter(self._tmp, self._run_id, enabled(self._opt_in))
        yield self._part.add(rows)
        PROGRESS.add(done=1)

    def finish_bundle(self) -> Iterator:
        if self._part is not None:
            yield beam.pvalue.TaggedOutput(PARTS, GlobalWindows.windowed_value(self._part.close()))
        self._part = None


def _publish(settled: Settled) -> Settled:
    """Count a record in Beam's metrics, once its duplicate state is decided."""
    for name, n in settled.counts.items():
        if name.startswith(DECIDED) and name != "documents/read":
            Metrics.counter(*name.split("/", 1)).inc(n)
    return settled


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


class _Sum(beam.CombineFn):
    """Counts summed by name."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, total: Counter, counts: Mapping[str, int]) -> Counter:
        total.update(counts)
        return total

    def merge_accumulators(self, totals: Iterable[Counter]) -> Counter:
        merged: Counter = Counter()
        for total in totals:
            merged.update(total)
        return merged

    def extract_output(self, total: Counter) -> dict[str, int]:
        return dict(total)


class WriteOutputs(beam.PTransform):
    """Writes each document's rows into parts, commits them with this run's later duplicate
    ids skipped (where the run, by its ``token``, still owns the output), marks the shards of
    this run complete; returns the run's totals (one dict) once every shard is marked."""

    def __init__(self, tasks: Iterable[str], resume: Resume, run_id: str, token: int,
                 outputs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._outputs, self._token = outputs, token
        self._out = resume.output.rstrip("/")
        self._tasks = sorted(tasks)
        self._resume, self._run_id = resume, run_id
        self._tmp = f"{self._out}/.tmp-{run_id}"

    def expand(self, pcolls):
        rows, shards = pcolls
        written = rows | "WriteParts" >> beam.ParDo(
            _WriteParts(self._tmp, self._run_id, self._outputs)).with_outputs(PARTS, main="refs")
        settled = (
            written.refs
            | "ById" >> beam.WithKeys(lambda r: r.doc_id)
            | "SameId" >> beam.GroupByKey()
            | "Settle" >> beam.FlatMapTuple(settle)
            | "Count" >> beam.Map(_publish)
        )
        dups = settled | "Duplicates" >> beam.FlatMap(
            lambda s: [s.duplicate] if s.duplicate is not None else [])
        counts = (
            settled
            | "ShardCounts" >> beam.Map(lambda s: (s.ref.source, s.shard_counts()))
            | "CountsPerShard" >> beam.CombinePerKey(_Sum())
        )
        # only the shards whose earlier rows must go reach the commit (not every shard done)
        redone = shards | "Redone" >> beam.Filter(lambda s: bool(s.earlier))
        committed = (
            written[PARTS]
            | "PartList" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(finalize, self._out, self._tasks, self._tmp, self._run_id,
                                     beam.pvalue.AsList(dups), beam.pvalue.AsList(redone),
                                     self._token)
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
        totals = (settled | "RecordCounts" >> beam.Map(lambda s: s.counts)
                  | "RunTotals" >> beam.CombineGlobally(_Sum()))
        return (
            marked
            | "MarkerCount" >> beam.combiners.Count.Globally()
            | "Marked" >> beam.Map(_mark_run, self._out, self._run_id,
                                   beam.pvalue.AsSingleton(committed))
            | "Totals" >> beam.Map(lambda _, totals: totals, beam.pvalue.AsSingleton(totals))
        )


def _mark_run(markers: int, out: str, run_id: str, committed: int) -> int:
    """Record that every shard of the run has its marker (after the commit)."""
    mark_run(out, run_id)
    return markers
