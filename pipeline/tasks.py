"""The task file: YAML -> validated ``TaskSpec``s, failing before any document is read.

```yaml
tasks:
  procedure:
    kind: hf                 # Hugging Face token-classification directory or hub id
    model: BSC-NLP4BIA/DT4H_XLM-R_stl_multilingual_procedure
    languages: [es, it, ro, en, nl, sv, cs]
  symptom:
    kind: mtl                # DT4H multi-task state dict (.pt or .safetensors)
    model: models/DT4H_XLM-R_mtl_es-it-ro_symptom.pt
    encoder: FacebookAI/xlm-roberta-base   # encoder config and tokenizer
    heads: {es: symptom_es_ner, it: symptom_it_ner, ro: symptom_ro_ner}
    # labels: [B-SYMPTOM, I-SYMPTOM, O]   # default: B-/I-<ENTITY>, O from the head name
```
Optional for both kinds: ``tokenizer`` (default: the model directory, or ``encoder``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
import yaml

from transforms.models import ModelLoadError, load_state_dict, localize, mtl_heads
from transforms.spans import LabelScheme, bio_scheme

KINDS = ("hf", "mtl")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEAD_ENTITY = re.compile(r"^([A-Za-z]+)(?:_[a-z]{2})?(?:_ner)?$")
_LANG_ALIASES = {"cz": "cs"}


class TaskFileError(ValueError):
    """A problem of the task file, with the task it concerns and how to fix it."""


def normalize_lang(code: str) -> str:
    """ISO 639-1 code, lower case; ``cz`` (a common slip for Czech) becomes ``cs``."""
    code = str(code).strip().lower().replace("_", "-").split("-")[0]
    return _LANG_ALIASES.get(code, code)


@dataclass(frozen=True)
class TaskSpec:
    """One NER task: which model, which languages, which head and labels per language."""

    name: str
    kind: str
    model: str
    languages: tuple[str, ...]
    tokenizer: str
    encoder: str | None = None
    heads: Mapping[str, str | None] = field(default_factory=dict)  # lang -> head (None for hf)
    labels: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)  # head -> labels

    def head_for(self, lang: str) -> str | None:
        """The model head that serves ``lang`` (``None`` for a single-head model)."""
        return self.heads[lang]

    def scheme(self, head: str | None) -> LabelScheme:
        """The BIO scheme of ``head``'s labels."""
        return bio_scheme(dict(enumerate(self.labels[head])))


def load_tasks(path: str) -> dict[str, TaskSpec]:
    """Read and validate a task file; raise ``TaskFileError`` on the first problem found."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise TaskFileError(f"task file {path!r} not found") from e
    except (OSError, yaml.YAMLError) as e:
        raise TaskFileError(f"task file {path!r} is unreadable: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict) or not raw["tasks"]:
        raise TaskFileError(f"task file {path!r} needs a non-empty mapping under `tasks:`")
    base = posixpath.dirname(path)
    return {name: _parse(str(name), cfg, base) for name, cfg in raw["tasks"].items()}


def _resolve(location: str, base: str) -> str:
    """A relative path is taken relative to the task file's folder (local or remote) when it
    exists there; otherwise it is used as given (a hub id, a path from the working directory)."""
    if "://" in location or location.startswith("/"):
        return location
    candidate = posixpath.join(base, location) if base else location
    try:
        fs, p = fsspec.core.url_to_fs(candidate)
        return candidate if fs.exists(p) else location
    except (OSError, ValueError):
        return location


def _parse(name: str, cfg: Any, base: str) -> TaskSpec:
    def fail(msg: str) -> TaskFileError:
        return TaskFileError(f"task {name!r}: {msg}")

    if not _NAME_RE.match(name):
        raise fail("task names become file names: use letters, digits, '_', '.', '-'")
    if not isinstance(cfg, dict):
        raise fail("expected a mapping with `kind`, `model` and `languages`")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r}; use one of {list(KINDS)}")
    if not cfg.get("model"):
        raise fail("`model:` is missing: a model directory, hub id or checkpoint path")
    model = _resolve(str(cfg["model"]), base)
    try:
        if kind == "hf":
            return _parse_hf(name, cfg, model, base)
        return _parse_mtl(name, cfg, model, base)
    except (ModelLoadError, ValueError, OSError) as e:
        if isinstance(e, TaskFileError):
            raise
        raise fail(str(e)) from e


def _languages(cfg: Mapping[str, Any], default: list[str]) -> tuple[str, ...]:
    langs = cfg.get("languages", default)
    if not isinstance(langs, list) or not langs:
        raise ValueError("`languages:` must be a non-empty list of ISO 639-1 codes")
    return tuple(dict.fromkeys(normalize_lang(x) for x in langs))


def _parse_hf(name: str, cfg: Mapping[str, Any], model: str, base: str) -> TaskSpec:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(localize(model))
    except OSError as e:
        raise ValueError(
            f"cannot load the model config of {model!r} ({type(e).__name__}). Fix: point "
            "`model:` at a local directory with config.json (download it once where a hub is "
            "reachable), or run where the hub is reachable"
        ) from e
    id2label = getattr(config, "id2label", None) or {}
    labels = bio_scheme(id2label).id2label
    langs = _languages(cfg, [])
    return TaskSpec(
        name=name, kind="hf", model=model, languages=langs,
        tokenizer=_resolve(str(cfg.get("tokenizer", model)), base),
        heads={lang: None for lang in langs}, labels={None: labels},
    )


def _parse_mtl(name: str, cfg: Mapping[str, Any], model: str, base: str) -> TaskSpec:
    from transformers import AutoConfig

    heads_cfg = cfg.get("heads")
    if not isinstance(heads_cfg, dict) or not heads_cfg:
        raise ValueError("`heads:` must map each language to a head, e.g. {es: symptom_es_ner}")
    heads = {normalize_lang(k): str(v) for k, v in heads_cfg.items()}
    langs = _languages(cfg, list(heads))
    no_head = [lang for lang in langs if lang not in heads]
    if no_head:
        raise ValueError(f"languages {no_head} have no entry in `heads:`")
    found = mtl_heads(load_state_dict(model))
    missing = sorted({h for h in heads.values() if h not in found})
    if missing:
        raise ValueError(
            f"checkpoint {model!r} has no head {missing}; its heads are {sorted(found)}. "
            "Fix `heads:` to name existing heads"
        )
    encoder = _resolve(str(cfg.get("encoder", "FacebookAI/xlm-roberta-base")), base)
    try:
        AutoConfig.from_pretrained(localize(encoder))
    except OSError as e:
        raise ValueError(
            f"cannot load the encoder config {encoder!r} ({type(e).__name__}). Fix: set "
            "`encoder:` to a local xlm-roberta-base directory (config and tokenizer)"
        ) from e
    labels: dict[str | None, tuple[str, ...]] = {}
    for head in sorted(set(heads.values())):
        labs = cfg.get("labels") or _default_labels(head, cfg.get("entity"))
        labs = bio_scheme(dict(enumerate(labs))).id2label
        n_out = found[head][0].shape[0]
        if len(labs) != n_out:
            raise ValueError(f"head {head!r} has {n_out} outputs but labels are {list(labs)}")
        labels[head] = labs
    return TaskSpec(
        name=name, kind="mtl", model=model, languages=langs,
        tokenizer=_resolve(str(cfg.get("tokenizer", encoder)), base), encoder=encoder,
        heads={lang: heads[lang] for lang in langs}, labels=labels,
    )


def _default_labels(head: str, entity: str | None) -> list[str]:
    """DT4H heads are ``{0: B-<ENTITY>, 1: I-<ENTITY>, 2: O}``, the entity named by the head."""
    if not entity:
        m = _HEAD_ENTITY.match(head)
        if not m:
            raise ValueError(
                f"cannot tell the entity of head {head!r}; set `entity:` or `labels:`"
            )
        entity = m.group(1)
    ent = entity.upper()
    return [f"B-{ent}", f"I-{ent}", "O"]
