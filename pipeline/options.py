"""Command-line options of the annotation job, and a strict parser for them.

``AnnotateOptions`` is a Beam ``PipelineOptions`` subclass (so the options travel to workers);
``parse_options`` checks a command line against every option that this job and Beam's runners
know, lists them all, grouped, with their defaults under ``--help``, and refuses an unknown or
mistyped option with the nearest valid one, before anything runs.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import TYPE_CHECKING, Mapping, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.align import OUTPUTS
from transforms.batch import CPU_BATCH, GPU_BATCH
from transforms.segment import REFERENCE_WINDOW
from transforms.shards import FORMATS
from transforms.spec import BACKENDS, PRECISIONS

if TYPE_CHECKING:
    from transforms.handlers import InferenceConfig
    from transforms.spec import TaskSpec

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(value: str | bool) -> bool:
    """``--flag``, ``--flag=true`` or ``--flag false``: Flex Templates pass explicit values."""
    if isinstance(value, bool):
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _flag(group, name: str, help: str, default: bool | None = False) -> None:
    group.add_argument(name, type=boolean, nargs="?", const=True, default=default,
                       metavar="BOOL", help=help)


class AnnotateOptions(PipelineOptions):
    """``--input``, ``--output`` and ``--tasks`` are required; the rest have sensible defaults."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        io = parser.add_argument_group("input and output")
        io.add_argument("--input", help="Input: a folder (searched recursively), a glob or a "
                        "file of .txt, .jsonl[.gz|.zst], .parquet or .json (DT4H CDM) "
                        "documents; local or any fsspec URL (gs://, s3://). Required.")
        io.add_argument("--output", help="Output folder (local path or fsspec URL). Required.")
        io.add_argument("--input_format", default=None, choices=FORMATS,
                        help="Input format when file names do not say it (cdm: DT4H CDM "
                             "documents, one per .json file or JSON Lines of them).")
        io.add_argument("--id_field", default="id", help="Record field of the document id.")
        io.add_argument("--text_field", default="text", help="Record field of the text.")
        io.add_argument("--lang_field", default="lang",
                        help="Record field of the language (`language` is also read).")
        io.add_argument("--write", default="", metavar="OUTPUTS",
                        help="Outputs beside the defaults (TSV, span, document and error "
                             "Parquet), comma separated: cdm (a DT4H CDM NlpResponse per "
                             "document, JSON Lines under OUT/cdm/), note_nlp (OMOP CDM NOTE_NLP "
                             "rows, Parquet and CSV under OUT/note_nlp/).")
        io.add_argument("--note_id_field", default=None,
                        help="NOTE_NLP note_id: the input metadata field holding the integer "
                             "OMOP note id (default: the document id).")
        io.add_argument("--snippet_chars", type=int, default=100,
                        help="NOTE_NLP snippet: characters of text around each mention "
                             "(at most 250, the column's width).")
        io.add_argument("--split_bytes", type=int, default=64 << 20,
                        help="Uncompressed JSONL files larger than this are read in pieces of "
                             "this many bytes, in parallel.")
        _flag(io, "--force", "Redo every input shard, even those an earlier run over the same "
                             "--output completed (and marked in OUT/_shards/).")

        models = parser.add_argument_group("tasks and languages")
        models.add_argument("--tasks", help="Task file (YAML) naming each task and its model. "
                            "Required.")
        models.add_argument("--language", default=None,
                            help="Language (ISO 639-1) of documents whose record and file name "
                                 "give none; without it, their language is detected.")
        _flag(models, "--detect_language", "Detect every document's language, even where its "
              "record, its file name or --language gives one.")
        models.add_argument("--min_lang_confidence", type=float, default=0.2,
                            help="Detected languages below this confidence become 'und'.")
        _flag(models, "--reference_compat",
              "Reproduce the DT4H reference inference scripts exactly (raw text, 512-token "
              "windows with stride 128, fp32, their decoding).")

        infer = parser.add_argument_group("inference")
        infer.add_argument("--max_tokens", type=int, default=512,
                           help="Sub-words per model window, special tokens included (whole "
                                "sentences are packed).")
        infer.add_argument("--overlap", type=int, default=None,
                           help="Sub-words shared by consecutive windows of a long sentence "
                                "(default: a quarter of --max_tokens).")
        infer.add_argument("--precision", default="auto", choices=PRECISIONS,
                           help="auto: bf16 on CUDA GPUs (fp16 where bf16 is missing); on a "
                                "CPU int8 weights with OpenVINO, else the fastest of "
                                "fp32/bf16/fp16 timed on the model's shapes (fp32 with "
                                "--reference_compat). int8 needs --backend openvino.")
        infer.add_argument("--backend", default="auto", choices=BACKENDS,
                           help="Where the encoder runs on a CPU: auto (OpenVINO where "
                                "installed, else torch), torch or openvino (converted once per "
                                "worker and cached; a failed conversion keeps torch). GPUs "
                                "always run torch.")
        infer.add_argument("--batch_tokens", type=int, default=None,
                           help="Token budget of one inference batch (padded size, windows "
                                f"sorted by length; default: {GPU_BATCH.tokens} with a GPU, "
                                f"{CPU_BATCH.tokens} on a CPU).")
        infer.add_argument("--max_batch_windows", type=int, default=None,
                           help="Most windows in one inference batch (default: "
                                f"{GPU_BATCH.windows} with a GPU, {CPU_BATCH.windows} on a "
                                "CPU).")
        infer.add_argument("--group_tokens", type=int, default=None,
                           help="Tokens of the documents grouped for one inference call "
                                "(their windows are sorted together; default: 8 x "
                                "--batch_tokens).")
        _flag(infer, "--compile", "torch.compile the encoder (a one-off compilation per "
                                  "worker; worth it for long runs).")
        infer.add_argument("--torch_threads", type=int, default=None,
                           help="Threads of each process that runs a model (default: the "
                                "cores divided among the local worker processes).")
        infer.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                           help="Where models run; cuda fails at model load if no GPU is "
                                "usable (implied by --inference_accelerator).")
        infer.add_argument("--inference_accelerator", default=None,
                           help="Dataflow accelerator for the inference steps only, e.g. "
                                "'type:nvidia-l4;count:1;install-nvidia-driver' (a resource "
                                "hint: the CPU stages run on CPU workers).")
        _flag(infer, "--large_model", "Share one model copy among a worker's processes "
                                      "(default: true with a GPU, where each process's own "
                                      "copy would hold GPU memory and a CUDA context; false "
                                      "on a CPU).", default=None)

    def apply_device_defaults(self, gpu: bool) -> None:
        """Fill the options whose default depends on whether the models run on a GPU: the
        batch budget, and one model copy shared by a worker's processes (each process's own
        copy would hold GPU memory and a CUDA context, all time-slicing one GPU)."""
        budget = GPU_BATCH if gpu else CPU_BATCH
        if self.batch_tokens is None:
            self.batch_tokens = max(budget.tokens, self.max_tokens)
        if self.max_batch_windows is None:
            self.max_batch_windows = budget.windows
        if self.large_model is None:
            self.large_model = gpu

    def validate_required(self) -> None:
        """Fail with a usage message when a required option is missing or out of range (after
        ``apply_device_defaults``)."""
        missing = [f"--{n}" for n in ("input", "output", "tasks") if not getattr(self, n)]
        if missing:
            raise SystemExit(f"pipeline.run: missing required option(s) {', '.join(missing)} "
                             "(see --help)")
        if self.overlap is None:
            self.overlap = self.max_tokens // 4
        if self.max_tokens < 8 or not 0 <= 2 * self.overlap <= self.max_tokens - 2:
            raise SystemExit("pipeline.run: need --max_tokens >= 8 and 0 <= 2*--overlap <= "
                             "--max_tokens - 2")
        if self.batch_tokens is not None and self.batch_tokens < self.max_tokens:
            raise SystemExit("pipeline.run: --batch_tokens must be at least --max_tokens")
        if self.detect_language and self.language:
            raise SystemExit("pipeline.run: --detect_language and --language contradict each "
                             "other: give one")
        if self.precision == "int8" and self.backend != "openvino":
            raise SystemExit("pipeline.run: --precision int8 needs --backend openvino")
        unknown = sorted(set(self.outputs) - set(OUTPUTS))
        if unknown:
            raise SystemExit(f"pipeline.run: --write {','.join(unknown)}: unknown output; use "
                             f"{', '.join(OUTPUTS)}")
        if not 1 <= self.snippet_chars <= 250:
            raise SystemExit("pipeline.run: --snippet_chars must be 1 to 250")

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs ``--write`` opts into."""
        return tuple(dict.fromkeys(o.strip() for o in (self.write or "").split(",")
                                   if o.strip()))


def inference_config(opts: AnnotateOptions, require_cuda: bool = False) -> InferenceConfig:
    """How the models run, from the options (``--reference_compat``: torch, fp32, its windows;
    ``require_cuda``: the job asked for a GPU, so a model load without one fails)."""
    from transforms.handlers import InferenceConfig  # Beam's ML module: not for a light import

    compat = opts.reference_compat
    return InferenceConfig(
        precision="fp32" if compat and opts.precision == "auto" else opts.precision,
        backend="torch" if compat and opts.backend == "auto" else opts.backend,
        batch_tokens=max(opts.batch_tokens, REFERENCE_WINDOW) if compat else opts.batch_tokens,
        max_batch_windows=opts.max_batch_windows,
        pad_to=REFERENCE_WINDOW if compat else None, compile=opts.compile,
        device="cuda" if require_cuda else opts.device,
        threads=opts.torch_threads)


def cpu_precisions(opts: AnnotateOptions, specs: Mapping[str, TaskSpec], gpu: bool
                   ) -> dict[str, str]:
    """Each task's torch dtype where ``--precision auto`` runs torch on this machine's CPU,
    decided now (timed once per machine, then kept): the job's configuration records it, so
    the outputs of one configuration never mix precisions."""
    if gpu or opts.precision != "auto" or opts.reference_compat:
        return {}
    from transforms.backends import fastest_cpu_dtype, openvino_available

    if opts.backend == "openvino" or (opts.backend == "auto" and openvino_available()):
        return {}  # OpenVINO's auto is int8, decided by no timing
    return {name: fastest_cpu_dtype(*(spec.shapes or (768, 3072)))
            for name, spec in specs.items()}


def wants_gpu(options: PipelineOptions) -> bool:
    """Whether the job asked for a GPU: ``--device cuda``, ``--inference_accelerator``, or a
    Dataflow ``worker_accelerator`` service option (then no CUDA at model load is an error)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    opts = options.view_as(AnnotateOptions)
    service = options.view_as(GoogleCloudOptions).dataflow_service_options or []
    return (opts.device == "cuda" or bool(opts.inference_accelerator)
            or any(str(o).startswith("worker_accelerator") for o in service))


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
    """Every option of the job and of Beam's runners, grouped, with defaults in the help."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        usage="python -m pipeline.run --input IN --output OUT --tasks TASKS.yaml [options]",
        description="Annotate clinical documents with the NER models of a task file: read, "
                    "route by language, infer per task, align, write TSV and Parquet.",
        formatter_class=_Defaults, allow_abbrev=False,
        epilog="Runner options follow Beam's (https://beam.apache.org/documentation/runners/"
               "): e.g. --runner DataflowRunner --project P --region R --temp_location gs://...")
    for cls in _option_classes():
        if cls is AnnotateOptions:
            cls._add_argparse_args(p)
            continue
        group = p.add_argument_group(f"Beam: {cls.__name__}")
        try:
            cls._add_argparse_args(_Grouped(group))
        except argparse.ArgumentError:  # an option two Beam classes declare
            continue
    return p


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless it has none or the help says it."""

    def _get_help_string(self, action) -> str:
        if action.default is None or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


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
    """``python -m pipeline.options --template_metadata``: print the Flex Template metadata."""
    import json

    if sys.argv[1:] != ["--template_metadata"]:
        raise SystemExit("usage: python -m pipeline.options --template_metadata")
    print(json.dumps(template_metadata(), indent=2))


def parse_options(argv: Sequence[str] | None) -> PipelineOptions:
    """Beam ``PipelineOptions`` from a command line that names only known options; ``--help``
    prints them all and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if "-h" in argv or "--help" in argv:
        p.print_help()
        raise SystemExit(0)
    _, unknown = p.parse_known_args(argv)
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    paths = [a for a in unknown if not a.startswith("-") and os.path.exists(a)]
    if paths and not flags:  # `--input dir/*.txt` unquoted: the shell expanded it
        p.error(f"unexpected argument {paths[0]}: quote a pattern so that the shell passes it "
                f"whole, e.g. --input 'dir/*.jsonl.gz' (it gave {len(paths) + 1} paths)")
    if flags or unknown:
        known = [s for action in p._actions for s in action.option_strings]
        wrong = (flags or unknown)[0]
        near = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else " (see --help)"
        p.error(f"unknown option {wrong}{hint}")
    return PipelineOptions(argv)



if __name__ == "__main__":
    main()
