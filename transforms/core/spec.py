"""What the stages need to know of a task, below both the task file and the Beam transforms.

Pure data (no torch, no Beam): ``pipeline/tasks.py`` builds ``TaskSpec``s from the task file;
the stages in ``transforms/`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from transforms.core.link import DENSE, FUSED, NGRAM, NGRAM_MIN_SCORE
from transforms.core.spans import LabelScheme, bio_scheme

KINDS = ("hf", "mtl")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "openvino")


class BatchBudget(NamedTuple):
    """Padded sub-words and windows of one inference batch, and ``mix``: the most padding a
    longer window may add to the shorter ones of a batch before it starts a batch of its own
    (the price of one more batch, in padded sub-words; None: any)."""

    tokens: int
    windows: int
    mix: int | None


# The defaults per device: a GPU needs large batches to keep its cores busy (a base-size XLM-R
# batch of 32k tokens holds a few hundred MB of activations in bf16); a CPU runs as fast on
# smaller ones, whose activations stay in its caches, and one more batch costs it little
# (bench.whole: mix 64 vs none, padding 2,613 vs 8,789 sub-words, inference 10.6 vs 11.1 s);
# on a GPU, not measured yet, batches are filled to the budget as before.
CPU_BATCH = BatchBudget(tokens=8192, windows=256, mix=64)
GPU_BATCH = BatchBudget(tokens=32768, windows=1024, mix=None)
_LANG_ALIASES = {"cz": "cs"}  # the country's code for the language's, as the DT4H service writes


def is_lang_code(code: str) -> bool:
    """Whether a normalised language is shaped like an ISO 639 code (two or three letters)."""
    return 2 <= len(code) <= 3 and code.isascii() and code.isalpha()


def normalize_lang(code: str) -> str:
    """ISO 639-1 code, lower case, region dropped (``es-ES``); ``cz`` (Czechia's code, which
    the DT4H service writes for Czech) becomes ``cs``."""
    code = str(code).strip().lower().replace("_", "-").split("-")[0]
    return _LANG_ALIASES.get(code, code)


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One NER task: its model, its languages, and the heads (and their labels) per language.

    ``heads[lang]`` lists the heads that read the encoder for a document in ``lang`` (``None``
    is the single head of an ``hf`` model); every head of a window runs on one encoder pass.
    ``tokenizer_key`` is the same for tasks whose tokenizers are the same files, so that a
    document is tokenized once per tokenizer, not once per task. A qualifier task maps some of
    its entity labels to the flag they set on the other tasks' mentions (``qualifies``, e.g.
    ``{"NSCO": "negated", "USCO": "uncertain"}``; see ``transforms.core.qualify``).
    """

    name: str
    kind: str
    model: str
    languages: tuple[str, ...]
    tokenizer: str
    encoder: str | None = None
    heads: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)
    labels: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)
    tokenizer_key: str = ""
    revision: str | None = None
    max_positions: int | None = None
    shapes: tuple[int, int] | None = None  # the encoder's hidden and intermediate sizes
    qualifies: Mapping[str, str] = field(default_factory=dict)
    demonstration: bool = False  # a model for demonstrations, never for real notes

    @property
    def windows_key(self) -> str:
        """Which windows of a document this task reads (one set per tokenizer)."""
        return self.tokenizer_key or self.tokenizer

    def heads_for(self, lang: str) -> tuple[str | None, ...]:
        """The heads that serve ``lang``."""
        return self.heads[lang]

    @property
    def all_heads(self) -> tuple[str | None, ...]:
        """Every head of the task, each once, in a stable order."""
        return tuple(dict.fromkeys(h for hs in self.heads.values() for h in hs))

    def scheme(self, head: str | None) -> LabelScheme:
        """The BIO scheme of ``head``'s labels."""
        return bio_scheme(dict(enumerate(self.labels[head])))


@dataclass(frozen=True, kw_only=True)
class LinkerSpec:
    """A linker of the task file: the mention ``labels`` it codes, its ``terminology`` (a TSV
    or an OMOP vocabulary folder, with ``filters``), the code ``system`` of a TSV, and its
    bi-encoder per language (``models``; ``"*"``: any other language; none: character
    n-grams alone). ``ngrams``: whether character n-grams run beside a model (their ranks
    fused with its); ``top``: candidate codes kept per mention; ``min_score``: the least
    similarity a lone method's candidates need to code a mention (None: ``threshold``'s
    default)."""

    name: str
    labels: tuple[str, ...]
    terminology: str
    system: str | None = None
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)
    ngrams: bool = True
    top: int = 10
    min_score: float | None = None

    def thresholds(self) -> dict[str, float | None]:
        """The least similarity of each method this linker codes with: ``ngram`` for the
        languages without a model, ``dense`` where a model runs alone, ``fused`` (None: fused
        ranks are not similarities) where a model runs beside the n-grams."""
        out: dict[str, float | None] = {}
        if "*" not in self.models:
            out[NGRAM] = self.threshold(NGRAM)
        if self.models:
            out.update({DENSE: self.threshold(DENSE)} if not self.ngrams else {FUSED: None})
        return out

    def threshold(self, method: str) -> float:
        """The least similarity of ``method`` (``ngram`` or ``dense``) that codes alone:
        ``min_score``, else the calibrated n-gram one; a bi-encoder's similarities are its
        own, uncalibrated here (0: none)."""
        if self.min_score is not None:
            return self.min_score
        return NGRAM_MIN_SCORE if method == NGRAM else 0.0

    def model(self, lang: str | None) -> str | None:
        """The bi-encoder for mentions of ``lang`` (None: character n-grams alone)."""
        return self.models.get(lang or "") or self.models.get("*")
