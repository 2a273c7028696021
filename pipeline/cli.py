"""The command line of ``python -m pipeline.run``, answered before Beam loads.

The job's options are declared here (``AnnotateOptions`` reads them); ``--help`` lists them,
grouped, with their defaults, and ``--help_all`` adds every option of Beam's runners.
``check_command_line`` refuses an unknown or mistyped option (naming the nearest), a bad value,
a missing required option or a pattern the shell expanded, in one line, in a fraction of a
second: exit status 2 for every mistake in the command line, 1 for a set-up error or a stopped
job. Beam's option names come from ``pipeline.beam_flags`` (kept equal to Beam's by a test).
"""

from __future__ import annotations

import argparse
import difflib
import os
from typing import NoReturn, Sequence

from transforms.io.shards import FORMATS
from transforms.core.spec import BACKENDS, CPU_BATCH, GPU_BATCH, PRECISIONS

PROG = "python -m pipeline.run"
REQUIRED = ("input", "output", "tasks")
EPILOG = ("Runners: --help_all lists every option of Beam's runners (e.g. --runner "
          "DataflowRunner --project P --region R --temp_location gs://...). Exit status: 0 done, "
          "1 a set-up error or a stopped job (the message says which), 2 a mistake in the "
          "command line.")

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


def add_job_options(parser) -> None:
    """Declare the job's options on ``parser`` (an ``ArgumentParser`` or Beam's)."""
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
                    help="Record field of the language ('language' is also read).")
    io.add_argument("--write", default=None, metavar="OUTPUTS",
                    help="Outputs beside the defaults (TSV, span, document and error "
                         "Parquet), comma separated: cdm (a DT4H CDM NlpResponse per "
                         "document, JSON Lines under OUT/cdm/), note_nlp (OMOP CDM NOTE_NLP "
                         "rows, Parquet and CSV under OUT/note_nlp/); default: none.")
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
    infer.add_argument("--model_cache", default=None,
                       help="Shared location of model conversions (gs://, s3:// or a folder "
                            "every machine mounts): each is made once, by one machine under "
                            "a lock, and copied by the others (checked; a damaged one is made "
                            "again). Default: each machine converts on its first run.")
    infer.add_argument("--torch_threads", type=int, default=None,
                       help="Threads of each process that runs a model (default: the "
                            "cores divided among the local worker processes).")
    infer.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="Where models run; cuda fails at model load if no GPU is "
                            "usable (implied by --inference_accelerator).")
    infer.add_argument("--inference_accelerator", default=None,
                       help="Dataflow accelerator for the inference steps only, with its "
                            "machine type, e.g. 'type:nvidia-l4;count:1;machine_type:"
                            "g2-standard-8;install-nvidia-driver:5xx' (a right-fitting "
                            "resource hint: the CPU stages run on CPU workers).")
    _flag(infer, "--large_model", "Share one model copy among a worker's processes, each "
                                  "calling it through Beam's proxy (default: false, a copy "
                                  "in each process, the faster layout measured by "
                                  "bench.feed; true where the copies do not fit the GPU's "
                                  "memory).")


def usage(prog: str = PROG, required: Sequence[str] = REQUIRED) -> str:
    """The usage line: the command and its required options."""
    return " ".join([prog, *(f"--{n} {n.upper()}" for n in required), "[options]"])


def job_parser(prog: str = PROG, required: Sequence[str] = REQUIRED) -> argparse.ArgumentParser:
    """The job's options only: what ``--help`` shows."""
    p = argparse.ArgumentParser(
        prog=prog, usage=usage(prog, required), formatter_class=Defaults, allow_abbrev=False,
        epilog=EPILOG,
        description="Annotate clinical documents with the NER models of a task file: read, "
                    "route by language, infer per task, align, write TSV and Parquet.")
    p.add_argument("--help_all", action="store_true",
                   help="Show these options and every option of Beam's runners, then exit.")
    add_job_options(p)
    return p


def usage_error(message: str) -> NoReturn:
    """Stop on a mistake in the command line: the usage line, the message, exit status 2."""
    job_parser().error(message)


def check_command_line(argv: Sequence[str], prog: str = PROG,
                       required: Sequence[str] = REQUIRED) -> None:
    """Answer ``--help``, or refuse the command line's first mistake; both without loading Beam
    (its option names come from ``pipeline.beam_flags``). ``--help_all`` is left to
    ``pipeline.options.parse_options``, which has Beam's options."""
    from pipeline.beam_flags import BEAM_SWITCHES, BEAM_VALUED

    if "-h" in argv or "--help" in argv:
        job_parser(prog, required).print_help()
        raise SystemExit(0)
    if "--help_all" in argv:
        return  # Beam's options too: pipeline.options.parse_options answers it
    p = job_parser(prog, required)
    for name in BEAM_SWITCHES:
        p.add_argument(name, action="store_true", help=argparse.SUPPRESS)
    for name in BEAM_VALUED:
        p.add_argument(name, action="append", help=argparse.SUPPRESS)
    given, unknown = p.parse_known_args(argv)
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
    paths = [a for a in unknown if not a.startswith("-") and os.path.exists(a)]
    if paths and not flags:  # `--input dir/*.txt` unquoted: the shell expanded it
        p.error(f"unexpected argument {paths[0]}: quote a pattern so that the shell passes it "
                f"whole, e.g. --input 'dir/*.jsonl.gz' (it gave {len(paths) + 1} paths)")
    if flags or unknown:
        known = [s for action in p._actions for s in action.option_strings]
        wrong = (flags or unknown)[0]
        near = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
        p.error(f"unknown option {wrong}" + (f"; did you mean {near[0]}?" if near
                                               else " (see --help)"))
    missing = [f"--{n}" for n in required if not getattr(given, n)]
    if missing:
        p.error(f"missing required option(s) {', '.join(missing)}")


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless it has none or the help says it."""

    def _get_help_string(self, action) -> str:
        hidden = action.default is None or action.default is argparse.SUPPRESS or (
            action.default is False and action.type is not boolean)
        if hidden or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)

