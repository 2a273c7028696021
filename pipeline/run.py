"""Annotate documents with every task of a task file: ``python -m pipeline.run --help``.

read -> route by language -> per task: segment, batch by tokens, RunInference -> align -> write.
A rerun over the same output skips the input shards already done (``--force`` redoes them).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import (PipelineOptions, SetupOptions, StandardOptions,
                                                  TestOptions)

from pipeline.options import AnnotateOptions
from pipeline.smoke_models import is_smoke_model
from pipeline.summary import job_config, metric_totals, metrics_table, now, write_run_record
from pipeline.tasks import TaskFileError, TaskSpec, load_tasks
from transforms.align import DOCUMENTS, ERRORS, AlignDoFn
from transforms.batch import BatchByTokens
from transforms.handlers import TokenClassifierHandler
from transforms.read import Fields, InputError, ReadDocuments
from transforms.route import RouteDoFn, mark_duplicates
from transforms.segment import FAILURES, REFERENCE_WINDOW, SegmentDoFn
from transforms.shards import Resume
from transforms.write import WriteOutputs

LOG = logging.getLogger("pipeline")


def build(p: beam.Pipeline, opts: AnnotateOptions, specs: Mapping[str, TaskSpec],
          resume: Resume, run_id: str) -> None:
    """The whole job: read (the shards not yet done), route, infer per task, align, write."""
    read, shards = p | "ReadDocuments" >> ReadDocuments(
        opts.input, resume, Fields(opts.id_field, opts.text_field, opts.lang_field),
        opts.input_format, opts.split_bytes)
    docs = (
        read
        | "KeyById" >> beam.GroupBy(lambda d: d.doc_id)
        | "OncePerId" >> beam.FlatMapTuple(mark_duplicates)
        | "Route" >> beam.ParDo(RouteDoFn({n: s.languages for n, s in specs.items()},
                                          opts.language, opts.min_lang_confidence))
    )
    inferred = [docs | f"Infer_{name}" >> InferTask(spec, opts) for name, spec in specs.items()]
    key = beam.WithKeys
    aligned = (
        {"doc": docs | "KeyDocs" >> key(lambda d: d.key),
         "preds": [i[0] for i in inferred] | "AllPredictions" >> beam.Flatten()
         | "KeyPreds" >> key(lambda r: r.key),
         "failures": [i[1] for i in inferred] | "AllFailures" >> beam.Flatten()
         | "KeyFailures" >> key(lambda f: f.key)}
        | "Join" >> beam.CoGroupByKey()
        | "Align" >> beam.ParDo(AlignDoFn(specs, opts.reference_compat)).with_outputs(
            DOCUMENTS, ERRORS, main="spans")
    )
    (aligned.spans, aligned[DOCUMENTS], aligned[ERRORS], shards) | "Write" >> WriteOutputs(
        specs, resume, run_id)


class InferTask(beam.PTransform):
    """Documents routed to one task -> its window predictions."""

    def __init__(self, spec: TaskSpec, opts: AnnotateOptions) -> None:
        super().__init__()
        self._spec = spec
        self._opts = opts

    def expand(self, docs):
        """-> (window predictions, segmentation failures)."""
        o, spec = self._opts, self._spec
        precision = "fp32" if o.reference_compat and o.precision == "auto" else o.precision
        pad_to = REFERENCE_WINDOW if o.reference_compat else None
        windows = (
            docs
            | "Select" >> beam.Filter(lambda d, name=spec.name: name in d.tasks)
            | "Segment" >> beam.ParDo(SegmentDoFn(spec, o.max_tokens, o.overlap,
                                                  o.reference_compat)).with_outputs(
                FAILURES, main="windows")
        )
        infer = RunInference(
            TokenClassifierHandler(spec, precision, pad_to, o.large_model, o.compile))
        if o.inference_accelerator:
            infer = infer.with_resource_hints(accelerator=o.inference_accelerator)
        predictions = (
            windows.windows
            | "Batch" >> beam.ParDo(BatchByTokens(o.batch_tokens, o.max_batch_windows,
                                                  pad_to=pad_to))
            | "RunInference" >> infer
        )
        return predictions, windows[FAILURES]


def local_runner(runner: str | None):
    """The runner to use; the DirectRunner becomes Beam's in-process FnApiRunner.

    Beam 2.77's DirectRunner first tries to download and start the Prism runner binary, then
    falls back to the FnApiRunner; going there directly keeps local runs offline and fast.
    ``--runner PrismRunner`` still runs on Prism.
    """
    if runner in (None, "DirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        LOG.info("DirectRunner: running on Beam's in-process FnApiRunner (no Prism download)")
        return FnApiRunner()
    return runner


def run(argv: Sequence[str] | None = None, save_main_session: bool = True,
        test_pipeline: beam.Pipeline | None = None):
    """Parse options, validate the task file (before any document is read), run the job."""
    options = PipelineOptions(argv)
    options.view_as(SetupOptions).save_main_session = save_main_session
    opts = options.view_as(AnnotateOptions)
    opts.validate_required()
    specs = load_tasks(opts.tasks)
    LOG.info("tasks: %s", {n: (s.kind, list(s.languages)) for n, s in specs.items()})
    for spec in specs.values():
        if is_smoke_model(spec.model):
            LOG.warning("task %s: SMOKE TEST model with RANDOM weights (%s): its spans are noise",
                        spec.name, spec.model)
    config = job_config(opts, specs)
    started = now()
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    p = test_pipeline or beam.Pipeline(
        runner=local_runner(options.view_as(StandardOptions).runner), options=options)
    build(p, opts, specs, Resume(opts.output, config, opts.force), run_id)
    result = p.run()
    result.wait_until_finish()
    totals = metric_totals(result)
    if not options.view_as(TestOptions).dry_run:
        write_run_record(opts.output, run_id, options.get_all_options(drop_default=True), config,
                         started, now(), totals)
    LOG.info("done: outputs under %s\n%s", opts.output, metrics_table(totals))
    return result


def main() -> None:
    """Console entry point."""
    level = os.environ.get("CLINICAL_NER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        run(sys.argv[1:])
    except (TaskFileError, InputError) as e:
        raise SystemExit(f"pipeline.run: {e}") from None


if __name__ == "__main__":
    main()
