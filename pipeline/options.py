"""Command-line options of the annotation job (Beam's argparse conventions)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.handlers import PRECISIONS
from transforms.read import FORMATS


class AnnotateOptions(PipelineOptions):
    """``--input``, ``--output`` and ``--tasks`` are required; the rest have sensible defaults."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input", help="Directory of .txt files, a glob, or JSONL file(s).")
        parser.add_argument("--output", help="Output directory (local path or fsspec URL).")
        parser.add_argument("--tasks", help="Task file (YAML) naming each task and its model.")
        parser.add_argument("--force", action="store_true",
                            help="Redo every input shard, even those an earlier run over the "
                                 "same --output completed (and marked in OUT/_shards/).")
        parser.add_argument("--language", default=None,
                            help="Language (ISO 639-1) of documents whose record and file name "
                                 "give none; without it, their language is detected.")
        parser.add_argument("--min_lang_confidence", type=float, default=0.2,
                            help="Detected languages below this confidence become 'und'.")
        parser.add_argument("--reference_compat", action="store_true",
                            help="Reproduce the DT4H reference inference scripts exactly.")
        parser.add_argument("--max_tokens", type=int, default=512,
                            help="Sub-words per model window, special tokens included (whole "
                                 "sentences are packed; 256 is about 20%% faster on CPU).")
        parser.add_argument("--overlap", type=int, default=None,
                            help="Sub-words shared by consecutive windows of a long sentence "
                                 "(default: a quarter of --max_tokens; --reference_compat uses "
                                 "a stride of 128).")
        parser.add_argument("--compile", action="store_true",
                            help="torch.compile the encoder: about 10%% faster on CPU after a "
                                 "one-off compilation of about a minute per worker.")
        parser.add_argument("--batch_tokens", type=int, default=8192,
                            help="Token budget of one inference batch (windows sorted by length).")
        parser.add_argument("--max_batch_windows", type=int, default=256,
                            help="Most windows in one inference batch.")
        parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                            help="auto: bf16 on CUDA and on CPUs with AMX, else fp32 "
                                 "(fp32 with --reference_compat).")
        parser.add_argument("--inference_accelerator", default=None,
                            help="Dataflow accelerator for the inference steps only, e.g. "
                                 "'type:nvidia-l4;count:1;install-nvidia-driver' (a resource "
                                 "hint: the CPU stages run on CPU workers).")
        parser.add_argument("--large_model", action="store_true",
                            help="Share one model copy across a worker's processes (GPU workers).")
        parser.add_argument("--input_format", default=None, choices=FORMATS,
                            help="Input format when file names do not say it.")
        parser.add_argument("--split_bytes", type=int, default=64 << 20,
                            help="Uncompressed JSONL files larger than this are read in pieces "
                                 "of this many bytes, in parallel.")
        parser.add_argument("--id_field", default="id", help="Record field of the document id.")
        parser.add_argument("--text_field", default="text", help="Record field of the text.")
        parser.add_argument("--lang_field", default="lang",
                            help="Record field of the language (`language` is also read).")

    def validate_required(self) -> None:
        """Fail with a usage message when a required option is missing or out of range."""
        missing = [f"--{n}" for n in ("input", "output", "tasks") if not getattr(self, n)]
        if missing:
            raise SystemExit(f"pipeline.run: missing required option(s) {', '.join(missing)}")
        if self.overlap is None:
            self.overlap = self.max_tokens // 4
        if self.max_tokens < 8 or not 0 <= 2 * self.overlap <= self.max_tokens - 2:
            raise SystemExit("pipeline.run: need --max_tokens >= 8 and 0 <= 2*--overlap <= "
                             "--max_tokens - 2")
