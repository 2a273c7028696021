"""Annotate documents with every task of a task file: ``python -m pipeline.run --help``.

read -> route by language -> segment (once per tokenizer) -> group -> infer, per task ->
decode -> qualify -> render -> write. A document travels with its windows and predictions;
nothing joins them back. A rerun over the same output skips the input shards already done
(``--force`` redoes them).
"""

from __future__ import annotations

import gc
import logging
import os
import posixpath
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from pipeline.cli import check_command_line

if TYPE_CHECKING:  # Beam and the stages load when the job is built: --help needs neither
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import AnnotateOptions
    from transforms.io.shards import Resume
    from transforms.core.spec import LinkerSpec, TaskSpec

LOG = logging.getLogger("pipeline")
LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "PrismRunner")


def build(p: beam.Pipeline, opts: AnnotateOptions, specs: Mapping[str, TaskSpec],
          resume: Resume, run_id: str, token: int, record: Mapping, gpu: bool = False,
          linkers: Mapping[str, LinkerSpec] | None = None) -> None:
    """The whole job: read (the shards not yet done), route, segment, infer per task, decode,
    qualify, link (where the task file has linkers), render, write (the run owns the output
    from ``token`` on)."""
    import apache_beam as beam

    from pipeline.summary import run_info, write_run_record
    from transforms.batch import GroupDocuments
    from transforms.decode import DecodeDoFn
    from transforms.link import LinkMentions
    from transforms.qualify import QualifyDoFn
    from transforms.read import Fields, ReadDocuments
    from transforms.render import RenderDoFn
    from transforms.route import RouteDoFn
    from transforms.segment import SegmentDoFn
    from transforms.write import WriteOutputs

    info = run_info(opts, record["config"], record["started"])
    fields = Fields(id=opts.id_field, text=opts.text_field, lang=opts.lang_field)
    docs, shards = p | "ReadDocuments" >> ReadDocuments(opts.input, resume, fields,
                                                        opts.input_format, opts.split_bytes)
    groups = (
        docs
        | "Route" >> beam.ParDo(RouteDoFn({n: s.languages for n, s in specs.items()},
                                          opts.language, opts.min_lang_confidence,
                                          opts.detect_language))
        | "Segment" >> beam.ParDo(SegmentDoFn(specs, opts.method))
        | "Group" >> beam.ParDo(GroupDocuments(opts.group_tokens or 8 * opts.batch_tokens))
    )
    for name, spec in specs.items():
        groups = groups | f"Infer_{name}" >> infer(spec, opts, gpu)
    rows = (
        groups
        | "Documents" >> beam.FlatMap(lambda group: group)
        | "Decode" >> beam.ParDo(DecodeDoFn(specs, opts.method))
        | "Qualify" >> beam.ParDo(QualifyDoFn(specs))
    )
    if linkers:
        rows = rows | "Link" >> LinkMentions(linkers, "cuda" if gpu else opts.device,
                                             opts.model_cache)
    rows = rows | "Render" >> beam.ParDo(RenderDoFn(specs, opts.outputs, info))
    totals = (rows, shards) | "Write" >> WriteOutputs(specs, resume, run_id, token,
                                                      opts.outputs)
    totals | "RunRecord" >> beam.Map(lambda t: write_run_record(t, **record))


def infer(spec: TaskSpec, opts: AnnotateOptions, require_cuda: bool = False) -> beam.PTransform:
    """RunInference of one task over groups of documents (the GPU step, if any)."""
    from pipeline.options import inference_config
    from transforms.handlers import InferTask, TokenClassifierHandler

    config = inference_config(opts, require_cuda)
    step = InferTask(TokenClassifierHandler(spec, config, opts.large_model))
    if opts.inference_accelerator:
        step = step.with_resource_hints(accelerator=opts.inference_accelerator)
    return step


def runs_here(options: PipelineOptions) -> bool:
    """Whether the job runs on this machine, to be waited for: Beam's local runners, and the
    portable runners when their job server and cluster are started here (``PortableRunner
    --job_endpoint embed``, ``FlinkRunner`` with its default ``--flink_master [auto]`` or
    ``[local]``, ``SparkRunner`` with a ``local[N]`` master). Elsewhere (Dataflow, a Flink or
    Spark cluster, a job server on another machine) the job is submitted and this returns."""
    given = options.get_all_options()
    runner = given.get("runner")
    if runner == "PortableRunner":
        return given.get("job_endpoint") == "embed"
    if runner == "FlinkRunner":
        return given.get("flink_master") in ("[auto]", "[local]")
    if runner == "SparkRunner":
        return str(given.get("spark_master_url")).startswith("local")
    return runner in LOCAL_RUNNERS


def local_runner(runner: str | None):
    """The runner to use; the DirectRunner becomes Beam's in-process FnApiRunner.

    Beam 2.77's DirectRunner first tries to download and start the Prism runner binary, then
    falls back to the FnApiRunner; going there directly keeps local runs offline and fast.
    ``--runner PrismRunner`` still runs on Prism.
    """
    if runner in (None, "DirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        LOG.info("DirectRunner: running on Beam's FnApiRunner (no Prism download)")
        return FnApiRunner()
    return runner


def gpu_processes(specs: Mapping[str, TaskSpec], cores: int, reads: int, shared: bool = False
                  ) -> int:
    """Worker processes of a local GPU job: two a core (while one waits on the GPU another
    does its host work: ``bench.feed``), at most one a read task, and, each with its own copy
    of every task's model (not ``shared``: ``--large_model``), no more than the GPU's memory
    holds (each model in bf16, half its weight files, plus 1 GiB a process for its CUDA
    context and activations)."""
    want = max(1, min(2 * cores, reads))
    if shared:
        return want
    from transforms.inference.turns import visible_gpu

    try:
        gpu_mib = int(subprocess.run(
            ["nvidia-smi", "-i", visible_gpu(), "--query-gpu=memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):  # no GPU to ask, or [N/A] (MIG)
        return want
    each = 1024 + sum(_weights_mib(spec.model) // 2 for spec in specs.values())
    fit = max(1, int(0.9 * gpu_mib) // each)
    if fit < want:
        LOG.info("GPU: %d worker processes, the copies of the models its %d MiB hold "
                 "(--large_model shares one copy)", fit, gpu_mib)
    return min(want, fit)


def _weights_mib(model: str) -> int:
    """MiB of a model's weights where they are local (its safetensors files, else its torch
    files, not an OpenVINO conversion); else xlm-roberta-base's fp32 size (1,100)."""
    path = Path(model)
    if path.is_file():
        return path.stat().st_size >> 20
    files = list(path.rglob("*.safetensors")) if path.is_dir() else []
    files = files or [f for f in (path.rglob("*") if path.is_dir() else ())
                      if f.suffix in (".bin", ".pt", ".pth") and "openvino" not in f.name]
    return sum(f.stat().st_size for f in files) >> 20 if files else 1100


def plan_local(options: PipelineOptions, opts: AnnotateOptions, resume: Resume,
               argv: Sequence[str], gpu: bool, specs: Mapping[str, TaskSpec]
               ) -> dict[str, int]:
    """For a local run: count the shards listed and to do, and use every core by default: with
    a GPU two worker processes per core (``gpu_processes``), torch's threads divided among
    them; without one, one process whose model has every core."""
    from apache_beam.options.pipeline_options import DirectOptions

    from transforms.read import plan_reads
    from transforms.io.shards import InputError, list_files, pending

    listed = list(list_files(opts.input, opts.input_format))
    if not listed:
        raise InputError(f"no input files match {opts.input!r}")
    check_note_ids(listed, opts)
    todo = list(pending(listed, resume))
    LOG.info("input: %d shards, %d complete (skipped), %d to do", len(listed),
             len(listed) - len(todo), len(todo))
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    tasks = sum(1 for _ in plan_reads(todo, opts.input_format))
    if not _given(argv, "direct_num_workers"):
        # With a GPU the CPU stages need every core; without one the models do, and one
        # process with all of them runs a model faster than several with a share each.
        direct.direct_num_workers = (gpu_processes(specs, cores, tasks, opts.large_model)
                                     if gpu else 1)
    if direct.direct_num_workers > 1 and not _given(argv, "direct_running_mode"):
        direct.direct_running_mode = "multi_processing"
    if opts.torch_threads is None:
        workers = direct.direct_num_workers if direct.direct_running_mode != "in_memory" else 1
        opts.torch_threads = max(1, cores // max(1, workers))
    return {"shards/listed": len(listed), "shards/complete_skipped": len(listed) - len(todo),
            "shards/to_do": len(todo)}


def check_note_ids(listed: Sequence, opts: AnnotateOptions) -> None:
    """``--write note_nlp`` over ``.txt`` files alone, none named by an integer: no document
    could have a NOTE_NLP row (a ``.txt`` file's id is its name). A set-up error, before any
    document is read."""
    from transforms.io.shards import InputError, input_format

    if "note_nlp" not in opts.outputs or opts.note_id_field:
        return
    if all(input_format(s.url, opts.input_format) == "txt" for s in listed) and not any(
            posixpath.basename(s.url)[:-4].isdigit() for s in listed):
        raise InputError(
            f"--write note_nlp: none of the {len(listed)} .txt files is named by an integer "
            f"(e.g. {posixpath.basename(listed[0].url)}), and a .txt file's name is its note "
            "id: name them by their OMOP note id, or give JSON Lines or Parquet records with "
            "one (--note_id_field)")


def _value(argv: Sequence[str], name: str) -> str | None:
    """The value the command line gives ``--name`` (its last), or None."""
    found = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            found = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def _given(argv: Sequence[str], name: str) -> bool:
    """Whether the command line sets ``--name``."""
    return any(a.split("=", 1)[0] == f"--{name}" for a in argv)


def run(argv: Sequence[str] | None = None, save_main_session: bool = True,
        test_pipeline: beam.Pipeline | None = None):
    """Parse options, validate the task file (before any document is read), run the job.

    Local runners wait for the job and print its metrics; other runners (Dataflow, a Flex
    Template launcher) submit it and return: the job writes its own run record when it ends.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import SetupOptions, StandardOptions, TestOptions

    from pipeline.options import (AnnotateOptions, check_accelerators, check_credentials,
                                  check_launch_python, check_runner, cpu_precisions,
                                  parse_options, uses_gpu, wants_gpu)
    from pipeline.summary import finish_run_record, job_config, metric_totals, metrics_table, now
    from pipeline.summary import record_check
    from pipeline.tasks import has_random_weights, load_linkers, load_tasks, pin_revisions
    from transforms.io.lock import OutputLock
    from transforms.io.shards import InputError, Resume, check_output_outside, expand_pattern
    from transforms.outputs.commit import check_layout, committed, own_output, recover

    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(argv)
    options.view_as(SetupOptions).save_main_session = save_main_session
    opts = options.view_as(AnnotateOptions)
    opts.validate_required()
    check_runner(options)
    check_accelerators(options)
    check_launch_python(options)
    check_credentials(options)
    runner = options.view_as(StandardOptions).runner
    local = runs_here(options) and test_pipeline is None
    gpu = uses_gpu(options, local)
    opts.apply_device_defaults(gpu)
    specs = pin_revisions(load_tasks(opts.tasks))
    linkers = load_linkers(opts.tasks, specs)
    check_windows(specs, opts)
    check_language(specs, opts)
    LOG.info("tasks: %s", {n: (s.kind, list(s.languages)) for n, s in specs.items()})
    for spec in specs.values():
        if has_random_weights(spec.model):
            LOG.warning("task %s: SMOKE TEST model with RANDOM weights (%s): its spans are noise",
                        spec.name, spec.model)
    check_output_outside(opts.input, opts.output)
    check_layout(opts.output)
    config = job_config(opts, specs, cpu_precisions(opts, specs, gpu) if local else None,
                        linkers)
    started = now()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{os.urandom(2).hex()}"
    resume = Resume(opts.output, config, opts.force)
    record = {"output": opts.output, "run_id": run_id, "config": config, "started": started,
              "options": options.get_all_options(drop_default=True)}
    if not local:
        if not expand_pattern(opts.input):
            raise InputError(f"no input files match {opts.input!r}")
        OutputLock(opts.output, run_id).check_free()  # a local run is writing there now
        dry = options.view_as(TestOptions).dry_run  # a graph only: the output left alone
        token = 0 if dry else own_output(opts.output, run_id, cluster=True)  # older jobs fenced
        return submit(test_pipeline or beam.Pipeline(runner=runner, options=options), opts, specs,
                      resume, run_id, token, record, wants_gpu(options), linkers)
    with OutputLock(opts.output, run_id):  # one job at a time writes an output
        token = None  # taken where there is something to recover or to do: a check leaves
        if recover(opts.output, specs, run_id, None):  # the output as it was
            token = own_output(opts.output, run_id)
            for line in recover(opts.output, specs, run_id, token):
                LOG.warning("output: %s (an earlier run stopped while committing)", line)
        shards = plan_local(options, opts, resume, argv, gpu, specs)
        if not shards["shards/to_do"]:
            LOG.info("nothing to do: every input shard is complete (--force redoes them)")
            record_check(shards, **record)
            return None
        token = token or own_output(opts.output, run_id)
        p = beam.Pipeline(runner=local_runner(runner), options=options)
        if options.view_as(TestOptions).dry_run:
            return submit(p, opts, specs, resume, run_id, token, record, wants_gpu(options),
                          linkers)
        build(p, opts, specs, resume, run_id, token, record, wants_gpu(options), linkers)
        interrupted = []  # Beam reports a Ctrl-C as its own RuntimeError: told apart here

        def on_ctrl_c(signum, frame):
            interrupted.append(signum)
            signal.default_int_handler(signum, frame)

        main = threading.current_thread() is threading.main_thread()  # signals: there only
        previous = signal.signal(signal.SIGINT, on_ctrl_c) if main else None
        try:
            result = p.run()
            result.wait_until_finish()
        except BaseException as e:  # noqa: BLE001 - said with what became of the commit
            cause = KeyboardInterrupt() if interrupted else e
            raise JobStopped(cause, opts.output, committed(opts.output, run_id)) from e
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
    totals = metric_totals(result)
    finish_run_record(opts.output, totals)
    LOG.info("done: outputs under %s\n%s", opts.output, metrics_table(totals))
    say_left_out(totals.counters if totals else {}, opts.output)
    return result


class OutputsIncomplete(RuntimeError):
    """Most annotated documents were left out of an output the user asked for."""


def say_left_out(counters: Mapping[str, int], output: str) -> None:
    """One line per opt-in output that left annotated documents out (NOTE_NLP without integer
    note ids): a warning, or ``OutputsIncomplete`` (exit status 1, the outputs committed)
    where it left out most of them."""
    from transforms.outputs import output as kind

    annotated = counters.get("documents/annotated", 0)
    for name, n in sorted(counters.items()):
        if not (name.startswith("documents/left_out_of_") and n):
            continue
        out = name.removeprefix("documents/left_out_of_")
        line = (f"--write {out}: {n} of {annotated} annotated documents were left out of it "
                f"({kind(out).fix}); the other outputs hold them, and "
                f"{output.rstrip('/')}/errors/ says why (stage {out})")
        if 2 * n > annotated:
            raise OutputsIncomplete(line)
        LOG.warning(line)


class JobStopped(Exception):
    """A local job that stopped on ``cause``; ``committed``: whether its run's commit was
    recorded before it did."""

    def __init__(self, cause: BaseException, output: str, committed: bool) -> None:
        super().__init__(type(cause).__name__)
        self.cause, self.output, self.committed = cause, output, committed


def submit(p: beam.Pipeline, opts: AnnotateOptions, specs: Mapping[str, TaskSpec],
           resume: Resume, run_id: str, token: int, record: Mapping, gpu: bool,
           linkers: Mapping[str, LinkerSpec]):
    """Build the job and submit it without waiting (Dataflow, a Flex Template launcher, a
    portable job server): the job writes its own run record when it ends."""
    build(p, opts, specs, resume, run_id, token, record, gpu, linkers)
    result = p.run()
    LOG.info("submitted: the job writes %s/run.json when it ends", opts.output.rstrip("/"))
    return result


def check_language(specs: Mapping[str, TaskSpec], opts: AnnotateOptions) -> None:
    """``--language`` must be a language code (aliases mapped) that some task takes: else every
    document without a language of its own would be skipped. A set-up error, in one line."""
    from pipeline.tasks import TaskFileError
    from transforms.core.spec import is_lang_code, normalize_lang

    if not opts.language:
        return
    lang, taken = normalize_lang(opts.language), sorted({la for s in specs.values()
                                                        for la in s.languages})
    if not is_lang_code(lang):
        raise TaskFileError(f"--language {opts.language!r} is not a language code: give an "
                            f"ISO 639-1 code, e.g. {', '.join(taken)}")
    if lang not in taken:
        raise TaskFileError(f"--language {opts.language}: no task of {opts.tasks} takes "
                            f"{lang!r} (they take {', '.join(taken)}), so every document "
                            "without a language of its own would be skipped")
    opts.language = lang


def check_windows(specs: Mapping[str, TaskSpec], opts: AnnotateOptions) -> None:
    """Windows must fit every model's positions: a set-up error, before anything runs."""
    from pipeline.tasks import TaskFileError

    need = opts.method.window
    for spec in specs.values():
        if spec.max_positions and need > spec.max_positions:
            raise TaskFileError(f"task {spec.name!r}: windows of {need} sub-words do not fit "
                                f"its model ({spec.max_positions} positions): lower "
                                "--max_tokens")


def main() -> None:
    """Console entry point: the command line checked before anything loads, then the job."""
    check_command_line(sys.argv[1:])
    from pipeline.logs import configure_logging
    from pipeline.tasks import TaskFileError

    configure_logging()
    tasks = _value(sys.argv[1:], "tasks")
    if tasks and "://" not in tasks and os.path.isfile(tasks):  # (else said after the options)
        from pipeline.tasks import check_task_file, digest_models_ahead

        try:
            check_task_file(tasks)  # before Beam and torch load: a mistake said at once
        except TaskFileError as e:
            raise SystemExit(f"pipeline.run: {e}") from None

        digest_models_ahead(tasks)  # while Beam and torch import
    from pipeline.options import CredentialsMissing  # (imports Beam)
    from transforms.io.lock import OutputBusy
    from transforms.io.shards import InputError
    from transforms.outputs.commit import LayoutError
    try:
        run(sys.argv[1:])
        # The job is over and its outputs committed: the interpreter's last collection would
        # walk every object of torch, Beam and the model for nothing (1.5 s of a 20 s job).
        gc.freeze()
    except (TaskFileError, InputError, OutputBusy, LayoutError, CredentialsMissing,
            OutputsIncomplete) as e:
        raise SystemExit(f"pipeline.run: {e}") from None
    except JobStopped as e:
        from pipeline.logs import stopped_message

        LOG.debug("the job stopped", exc_info=e.cause)
        raise SystemExit(stopped_message(e.cause, e.committed, e.output)) from None
    except Exception as e:  # noqa: BLE001 - a fault that stopped the job: say what to do
        from pipeline.logs import stopped_message

        LOG.debug("the job stopped", exc_info=True)
        raise SystemExit(stopped_message(e)) from None


if __name__ == "__main__":
    main()
