"""The annotation job's options as Beam ``PipelineOptions``, so that they travel to workers.

``AnnotateOptions`` reads the options ``pipeline.cli`` declares; ``parse_options`` checks a
command line there (before Beam loads) and parses it; ``parser`` lists every option, the job's
first, then Beam's runners' (``--help_all``); ``template_metadata`` is the Flex Template's.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Mapping, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cli import (PROG, REQUIRED, add_job_options, boolean, check_command_line,
                          job_parser, usage_error)
from transforms.core.method import Method
from transforms.outputs import OPT_IN
from transforms.core.spec import CPU_BATCH, GPU_BATCH

if TYPE_CHECKING:
    from transforms.handlers import InferenceConfig
    from transforms.core.spec import TaskSpec


class AnnotateOptions(PipelineOptions):
    """``--input``, ``--output`` and ``--tasks`` are required; the rest have sensible defaults."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_job_options(parser)

    def apply_device_defaults(self, gpu: bool) -> None:
        """Fill the options whose default depends on whether the models run on a GPU: the
        device (``auto`` becomes ``cuda``) and the batch budget."""
        budget = GPU_BATCH if gpu else CPU_BATCH
        if gpu and self.device == "auto":
            self.device = "cuda"  # decided once, for every stage and worker (CUDA is there)
        if self.batch_tokens is None:
            self.batch_tokens = max(budget.tokens, self.max_tokens)
        if self.max_batch_windows is None:
            self.max_batch_windows = budget.windows

    def validate_required(self) -> None:
        """Stop with a usage message (exit status 2) when options contradict each other or are
        out of range (after ``apply_device_defaults``)."""
        if self.overlap is None:
            self.overlap = self.max_tokens // 4
        if self.max_tokens < 8 or not 0 <= 2 * self.overlap <= self.max_tokens - 2:
            usage_error("need --max_tokens >= 8 and 0 <= 2*--overlap <= --max_tokens - 2")
        if self.batch_tokens is not None and self.batch_tokens < self.max_tokens:
            usage_error("--batch_tokens must be at least --max_tokens")
        if self.detect_language and self.language:
            usage_error("--detect_language and --language contradict each other: give one")
        if self.precision == "int8" and self.backend != "openvino":
            usage_error("--precision int8 needs --backend openvino")
        unknown = sorted(set(self.outputs) - set(OPT_IN))
        if unknown:
            usage_error(f"--write {','.join(unknown)}: unknown output; use {', '.join(OPT_IN)}")
        if not 1 <= self.snippet_chars <= 250:
            usage_error("--snippet_chars must be 1 to 250")
        if self.split_bytes < 1:
            usage_error("--split_bytes must be at least 1 (bytes per piece of a JSONL file)")
        if self.torch_threads is not None and self.torch_threads < 0:
            usage_error("--torch_threads must be 0 (torch's choice) or more")
        if not 0 <= self.min_lang_confidence <= 1:
            usage_error("--min_lang_confidence must be between 0 and 1")

    @property
    def method(self) -> Method:
        """How windows are cut and spans decoded (``--reference_compat``, ``--max_tokens``,
        ``--overlap``)."""
        return Method(reference_compat=bool(self.reference_compat), max_tokens=self.max_tokens,
                      overlap=self.overlap)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs ``--write`` opts into."""
        return tuple(dict.fromkeys(o.strip() for o in (self.write or "").split(",")
                                   if o.strip()))


def inference_config(opts: AnnotateOptions, require_cuda: bool = False) -> InferenceConfig:
    """How the models run, from the options (``--reference_compat``: torch, fp32, its windows;
    ``require_cuda``: the job asked for a GPU, so a model load without one fails)."""
    from transforms.handlers import InferenceConfig  # Beam's ML module: not for a light import

    method = opts.method
    return InferenceConfig(
        precision=method.precision(opts.precision), backend=method.backend(opts.backend),
        batch_tokens=method.batch_tokens(opts.batch_tokens),
        max_batch_windows=opts.max_batch_windows,
        batch_mix=(GPU_BATCH if require_cuda or opts.device == "cuda" else CPU_BATCH).mix,
        pad_to=method.pad_to, compile=opts.compile,
        device="cuda" if require_cuda else opts.device,
        threads=opts.torch_threads, model_cache=opts.model_cache)


def cpu_precisions(opts: AnnotateOptions, specs: Mapping[str, TaskSpec], gpu: bool
                   ) -> dict[str, str]:
    """What each task's model runs in on this machine's CPU where this machine decides it: the
    torch dtype of ``--precision auto`` (timed once per machine, then kept), or bf16 float
    parts of an OpenVINO int8 model (on AMX; fp32 float parts, as before they were decided,
    are not recorded). The job's configuration records it, so the outputs of one configuration
    never mix precisions."""
    if gpu:
        return {}
    from transforms.inference.backends import (fastest_cpu_dtype, int8_float_parts,
                                               openvino_available)

    backend, precision = opts.method.backend(opts.backend), opts.method.precision(opts.precision)
    openvino = backend == "openvino" or (backend == "auto" and openvino_available())
    if openvino and precision in ("auto", "int8"):
        floats = int8_float_parts()
        return {} if floats == "fp32" else {name: f"int8, float parts in {floats}"
                                            for name in specs}
    if precision != "auto" or openvino:
        return {}
    return {name: fastest_cpu_dtype(*(spec.shapes or (768, 3072)))
            for name, spec in specs.items()}


def worker_accelerators(options: PipelineOptions) -> list[str]:
    """Dataflow ``worker_accelerator`` values, as a service option or an experiment."""
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions

    given = [*(options.view_as(GoogleCloudOptions).dataflow_service_options or []),
             *(options.view_as(DebugOptions).experiments or [])]
    return [str(o).split("=", 1)[1] for o in given if str(o).startswith("worker_accelerator=")]


def wants_gpu(options: PipelineOptions) -> bool:
    """Whether the job asked for a GPU: ``--device cuda``, ``--inference_accelerator``, or a
    Dataflow ``worker_accelerator`` (then no CUDA at model load is an error)."""
    opts = options.view_as(AnnotateOptions)
    return (opts.device == "cuda" or bool(opts.inference_accelerator)
            or bool(worker_accelerators(options)))


IMAGE_PYTHON = (3, 11)  # the Python of launch/Dockerfile's image (a test holds them equal)


def check_launch_python(options: PipelineOptions, here: tuple[int, int] | None = None) -> None:
    """A Dataflow launch with this project's image must run the image's Python: the job
    pickles its code by value, which another Python version's workers cannot load. A set-up
    error, in one line."""
    from apache_beam.options.pipeline_options import StandardOptions, WorkerOptions

    here = here or sys.version_info[:2]
    if (options.view_as(StandardOptions).runner == "DataflowRunner"
            and options.view_as(WorkerOptions).sdk_container_image and here != IMAGE_PYTHON):
        image = ".".join(map(str, IMAGE_PYTHON))
        raise SystemExit(f"pipeline.run: the image's workers run Python {image}, this launch "
                         f"runs Python {'.'.join(map(str, here))}: launch from the image "
                         f"(README, Run on Dataflow) or with Python {image}")


def check_runner(options: PipelineOptions) -> None:
    """The runner must exist and have what it needs (Dataflow: project, temp location...): a
    mistake in the command line (exit status 2), before anything runs."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions
    from apache_beam.runners.runner import create_runner

    name = options.view_as(StandardOptions).runner
    if name is None:
        return
    try:
        create_runner(name)
    except ValueError as e:
        usage_error(str(e).split(". Valid")[0] + " (see --help_all)")
    cloud = options.view_as(GoogleCloudOptions)
    missing = [f"--{n}" for n in ("project", "region", "temp_location")
               if not getattr(cloud, n)]
    if name == "DataflowRunner" and missing:
        usage_error(f"--runner DataflowRunner needs {', '.join(missing)}")


class CredentialsMissing(RuntimeError):
    """The runner needs cloud credentials that this machine does not have."""


def check_credentials(options: PipelineOptions) -> None:
    """Dataflow is launched with Google Cloud's credentials of this machine: without any, Beam
    goes on anonymously and waits for minutes. A set-up error in one line, before anything is
    read or staged (a dry run needs none)."""
    from apache_beam.options.pipeline_options import StandardOptions, TestOptions

    if (options.view_as(StandardOptions).runner != "DataflowRunner"
            or options.view_as(TestOptions).dry_run):
        return
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError:
        raise CredentialsMissing(
            "--runner DataflowRunner: this machine has no Google Cloud credentials: run "
            "`gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS "
            "to a service account's key file), then the same command again") from None


def check_accelerators(options: PipelineOptions) -> None:
    """Dataflow's GPU options, checked before anything runs (usage errors): the right-fitting
    hint ``--inference_accelerator`` names its machine type and is not combined with a
    ``worker_accelerator``; an L4 runs only on a G2 machine type."""
    from apache_beam.options.pipeline_options import WorkerOptions

    hint = options.view_as(AnnotateOptions).inference_accelerator
    workers = worker_accelerators(options)
    if hint and workers:
        usage_error("--inference_accelerator (a right-fitting hint) and a worker_accelerator "
                    "contradict each other: Dataflow's right fitting asks for one only")
    if hint and "machine_type:" not in hint:
        usage_error("--inference_accelerator needs its machine type, e.g. 'type:nvidia-l4;"
                    "count:1;machine_type:g2-standard-8;install-nvidia-driver:5xx'")
    machine = options.view_as(WorkerOptions).machine_type or ""
    for accelerator in ([hint] if hint else workers):
        fields = dict(f.split(":", 1) for f in accelerator.split(";") if ":" in f)
        kind = fields.get("machine_type", machine)
        if fields.get("type") == "nvidia-l4" and kind and not kind.startswith("g2-"):
            usage_error(f"an nvidia-l4 GPU runs only on G2 machine types, not {kind}")


def uses_gpu(options: PipelineOptions, local: bool) -> bool:
    """Whether the models run on a GPU: the job asked for one, or a local run (not
    ``--device cpu``) finds CUDA here."""
    if wants_gpu(options):
        return True
    if not local or options.view_as(AnnotateOptions).device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


_TEMPLATE_REQUIRED = ("input", "output", "tasks")


def template_metadata() -> dict:
    """Flex Template metadata for every option of this job: its type as a regex (booleans take
    ``true``/``false``), its help, optional unless the job needs it."""
    p = argparse.ArgumentParser()
    AnnotateOptions._add_argparse_args(p)
    params = []
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.type is boolean:
            regex = "^(true|false)$"
        elif action.choices:
            regex = "^(" + "|".join(map(str, action.choices)) + ")$"
        elif action.type is int:
            regex = "^[0-9]+$"
        elif action.type is float:
            regex = "^[0-9]*[.]?[0-9]+$"
        elif action.dest in _TEMPLATE_REQUIRED:
            regex = "^gs://.+$"
        else:
            regex = "^.+$"
        entry = {"name": action.dest, "label": action.dest.replace("_", " ").capitalize(),
                 "helpText": (action.help or "").replace("%%", "%"), "regexes": [regex]}
        if action.dest not in _TEMPLATE_REQUIRED:
            entry["isOptional"] = True
        params.append(entry)
    return {"name": "clinical-ner-annotate",
            "description": "Annotate clinical documents with the DT4H NER models; writes "
                           "MultiClinAI TSV and Parquet.",
            "parameters": params}


def _option_classes() -> list[type[PipelineOptions]]:
    """This job's options first, then every options class of Beam's runners."""
    seen: list[type[PipelineOptions]] = [AnnotateOptions]
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def parser() -> argparse.ArgumentParser:
    """Every option of the job and of Beam's runners, grouped, with defaults (``--help_all``)."""
    p = job_parser()
    for cls in _option_classes()[1:]:
        group = p.add_argument_group(f"Beam: {cls.__name__}")
        try:
            cls._add_argparse_args(_Grouped(group))
        except argparse.ArgumentError:  # an option two Beam classes declare
            continue
    for action in p._actions:
        if "--direct_num_workers" in action.option_strings:  # the job decides it when not given
            action.help = ("Local worker processes (default: one per core, up to one per read "
                           "task, when models run on a GPU; else 1, the model using every core).")
    return p


def beam_flags() -> tuple[list[str], list[str]]:
    """Beam's runners' option names: those that take no value, and those that take one."""
    mine = {s for a in job_parser()._actions for s in a.option_strings}
    switches, valued = set(), set()
    for action in parser()._actions:
        names = set(action.option_strings) - mine
        (switches if action.nargs == 0 else valued).update(names)
    return sorted(switches), sorted(valued)


class _Grouped:
    """Gives Beam's ``_add_argparse_args`` an argument group as if it were the parser."""

    def __init__(self, group) -> None:
        self._group = group

    def add_argument(self, *args, **kwargs):
        kwargs.pop("required", None)
        try:
            return self._group.add_argument(*args, **kwargs)
        except argparse.ArgumentError:  # declared by another class already
            return None

    def add_argument_group(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return getattr(self._group, name)


def main() -> None:
    """``python -m pipeline.options --template_metadata``: the Flex Template metadata;
    ``--beam_flags``: the module ``pipeline.beam_flags`` for the installed Beam."""
    import json

    if sys.argv[1:] == ["--beam_flags"]:
        switches, valued = beam_flags()
        print('"""Beam\'s runners\' option names, for checking a command line before Beam loads:\n'
              'generated by ``python -m pipeline.options --beam_flags`` (a test keeps it equal to\n'
              'the installed Beam\'s)."""\n')
        for name, flags in (("BEAM_SWITCHES", switches), ("BEAM_VALUED", valued)):
            print(f"{name} = (")
            print("\n".join(f"    {f!r}," for f in flags) + "\n)")
        return
    if sys.argv[1:] != ["--template_metadata"]:
        raise SystemExit("usage: python -m pipeline.options --template_metadata|--beam_flags")
    print(json.dumps(template_metadata(), indent=2))


def parse_options(argv: Sequence[str] | None, prog: str = PROG,
                  required: Sequence[str] = REQUIRED) -> PipelineOptions:
    """Beam ``PipelineOptions`` from a command line that ``pipeline.cli`` found right (else it
    answered ``--help`` or stopped, exit status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help_all" in argv:
        parser().print_help()
        raise SystemExit(0)
    check_command_line(argv, prog, required)
    return PipelineOptions(argv)


if __name__ == "__main__":
    main()
