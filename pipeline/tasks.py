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
  negation:
    kind: hf                 # a qualifier: its scopes flag the other tasks' mentions
    model: BSC-NLP4BIA/negation-tagger
    languages: [es]
    qualifies: {NSCO: negated, USCO: uncertain}
linkers:                     # optional: code the mentions of some labels
  snomed:
    labels: [SYMPTOM, DISEASE]
    terminology: vocab/      # an OMOP vocabulary folder (CONCEPT.csv...) or a TSV code<TAB>term
    filters: {vocabulary_id: [SNOMED], standard_concept: [S]}   # OMOP only
    model: {es: ICB-UMA/ClinLinker-KB-GP, "*": cambridgeltl/SapBERT-UMLS-2020AB-all-lang-from-XLMR}
    # system: ICD10    # a TSV's code system; top: 10 codes kept; ngrams: true;
    # min_score: 0.9 (n-grams alone; a model's: 0)
```
Optional for both kinds: ``tokenizer`` (default: the model directory, or ``encoder``) and
``demonstration: true`` (a model for demonstrations, not real notes: the report says so).
Parsing imports neither torch nor Beam until a model file must be opened.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import posixpath
import re
import threading
from pathlib import Path
from typing import Any, Mapping

import fsspec
import yaml

from transforms.core.qualify import FLAGS
from transforms.core.spans import bio_scheme
from transforms.core.spec import KINDS, LinkerSpec, TaskSpec, normalize_lang
from transforms.io.storage import localize, tree_digest

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMON_KEYS = ("kind", "model", "languages", "revision", "tokenizer", "qualifies",
                "demonstration")
TASK_KEYS = {"hf": _COMMON_KEYS,
             "mtl": (*_COMMON_KEYS, "encoder", "heads", "labels", "entity")}
_HEAD_ENTITY = re.compile(r"^([A-Za-z]+)(?:_[a-z]{2})?(?:_ner)?$")
LOG = logging.getLogger("pipeline")
RANDOM_WEIGHTS_MARKER = "SMOKE_TEST_RANDOM_WEIGHTS"
# The files that define a tokenizer's output (two tasks with equal files share windows).
_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt")

__all__ = ["TaskFileError", "TaskSpec", "has_random_weights", "load_tasks", "normalize_lang",
           "pin_revisions"]


class TaskFileError(ValueError):
    """A problem of the task file, with the task it concerns and how to fix it."""


def has_random_weights(location: str) -> bool:
    """Whether a model folder (or a checkpoint's folder) is marked as random-weight test model."""
    from pathlib import Path

    path = Path(location)
    return (path if path.is_dir() else path.parent).joinpath(RANDOM_WEIGHTS_MARKER).exists()


def tokenizer_key(location: str) -> str:
    """Equal for tokenizers made of equal files (a content hash); else the location."""
    fs, path = fsspec.core.url_to_fs(location) if "://" in location else (None, location)
    if fs is None:
        from pathlib import Path

        folder = Path(location)
        if not folder.is_dir():
            return location
        digest = hashlib.sha1()
        for name in _TOKENIZER_FILES:
            f = folder / name
            if f.is_file():
                digest.update(name.encode() + b"\0" + f.read_bytes())
        return "sha1:" + digest.hexdigest()[:16]
    return location


TOP_LEVEL = ("tasks", "linkers")
LINKER_KEYS = ("labels", "terminology", "filters", "model", "system", "top", "ngrams",
               "min_score")


def _read(path: str) -> dict:
    """A task file's YAML, its top-level keys checked."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, yaml.SafeLoader)):
            # an alias repeats a node: nested ones expand exponentially (a "billion laughs")
            raise TaskFileError(f"task file {path!r}: YAML aliases (*name) are not allowed; "
                                "write each value out")
        raw = yaml.safe_load(text)
    except FileNotFoundError as e:
        raise TaskFileError(f"task file {path!r} not found") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise TaskFileError(f"task file {path!r} is unreadable: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict) or not raw["tasks"]:
        raise TaskFileError(f"task file {path!r} needs a non-empty mapping under `tasks:`")
    unknown = sorted(map(str, set(raw) - set(TOP_LEVEL)))
    if unknown:
        raise TaskFileError(f"task file {path!r}: unknown top-level key(s) {unknown}; the file "
                            f"has {list(TOP_LEVEL)}")
    return raw


def digest_models_ahead(path: str) -> threading.Thread:
    """Hash the local models of task file ``path`` on another thread (hashlib
    releases the GIL), so that their fingerprints are cached when the job asks for them: a
    first run's SHA-256 of a model overlaps Beam's and torch's imports instead of following
    them. Best effort: what is wrong with the file is left to ``load_tasks`` to say."""
    def digest() -> None:
        try:
            base = posixpath.dirname(path)
            for cfg in _read(path)["tasks"].values():
                location = cfg.get("model") if isinstance(cfg, dict) else None
                local = isinstance(location, str) and Path(_resolve(location, base))
                if local and local.exists():
                    tree_digest(local)
        except Exception as e:  # noqa: BLE001 - reported by load_tasks, not here
            LOG.debug("task file %s: models not hashed ahead (%s)", path, type(e).__name__)

    thread = threading.Thread(target=digest, name="digest-models-ahead", daemon=True)
    thread.start()
    return thread


def load_tasks(path: str, open_models: bool = True) -> dict[str, TaskSpec]:
    """Read and validate a task file's tasks; raise ``TaskFileError`` on the first problem.

    ``open_models=False`` validates the file alone (kinds, heads, languages, labels given in
    it) without opening a model, config or checkpoint: no hub, no downloads; an ``hf`` task's
    labels are then unknown (empty) and heads are not checked against the checkpoint.
    """
    from transforms.outputs import clashing_files

    raw, base = _read(path), posixpath.dirname(path)
    specs = {name: _parse(str(name), cfg, base, open_models)
             for name, cfg in raw["tasks"].items()}
    clash = clashing_files(str(name) for name in specs)
    if clash:
        raise TaskFileError(f"tasks {clash[1]!r} and {clash[2]!r} would both write {clash[0]} "
                            "in the output: rename one of them")
    return specs


def check_task_file(path: str) -> None:
    """A task file's structure (tasks and linkers) and that its local model paths exist,
    without opening a model or a terminology: the job's first check, before Beam and torch
    load (well under a second; ``load_tasks`` then checks the models themselves)."""
    specs = load_tasks(path, open_models=False)
    load_linkers(path, specs, open_terminologies=False)
    base = posixpath.dirname(path)
    for spec in specs.values():
        for location in dict.fromkeys(x for x in (spec.model, spec.encoder, spec.tokenizer) if x):
            if "://" not in location and not is_hub_id(location) and not Path(location).exists():
                raise TaskFileError(f"task {spec.name!r}: {location!r} does not exist"
                                    f"{_relative_note(location, location, base)}")


def load_linkers(path: str, specs: Mapping[str, TaskSpec], open_terminologies: bool = True
                 ) -> dict[str, LinkerSpec]:
    """A task file's linkers (``linkers:``), validated against its tasks ``specs``: each label
    one that a task's model has (where its labels are known) and coded by one linker only;
    with ``open_terminologies``, each terminology read (a set-up error if it cannot be, or
    holds no term)."""
    raw, base = _read(path), posixpath.dirname(path)
    value = raw.get("linkers") or {}
    if not isinstance(value, dict):
        raise TaskFileError("`linkers:` must map each linker's name to its settings")
    known = {lab.split("-", 1)[1] for s in specs.values() for labels in s.labels.values()
             for lab in labels if "-" in lab}
    if any(not s.labels or not all(s.labels.values()) for s in specs.values()):
        known = set()  # a model's labels not read (``open_models=False``): not checked
    linkers, coded = {}, {}
    for name, cfg in value.items():
        spec = _parse_linker(str(name), cfg, base, known)
        for label in spec.labels:
            if label in coded:
                raise TaskFileError(f"linker {name!r}: label {label} is coded by linker "
                                    f"{coded[label]!r} already; a label has one linker")
            coded[label] = spec.name
        if open_terminologies:
            from transforms.io.terminology import TerminologyError, read_terms

            try:
                read_terms(spec.terminology, spec.system, spec.filters)
            except TerminologyError as e:
                raise TaskFileError(f"linker {name!r}: {e}") from None
            for model in dict.fromkeys(spec.models.values()):
                try:
                    check_encoder(model)
                except ValueError as e:
                    raise TaskFileError(f"linker {name!r}: {e}") from None
        linkers[spec.name] = spec
    return linkers


def _parse_linker(name: str, cfg: Any, base: str, known: set[str]) -> LinkerSpec:
    def fail(msg: str) -> TaskFileError:
        return TaskFileError(f"linker {name!r}: {msg}")

    if not _NAME_RE.match(name):
        raise fail("linker names become file names: use letters, digits, '_', '.', '-'")
    if not isinstance(cfg, dict):
        raise fail("expected a mapping with `labels` and `terminology`")
    unknown = sorted(map(str, set(cfg) - set(LINKER_KEYS)))
    if unknown:
        raise fail(f"unknown key(s) {unknown}; a linker has {list(LINKER_KEYS)}")
    labels = cfg.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise fail("`labels:` must list the mention labels it codes, e.g. [SYMPTOM]")
    if len(set(labels)) != len(labels):
        raise fail("`labels:` names a label twice")
    missing = sorted(set(labels) - known) if known else []
    if missing:
        raise fail(f"no task's model has label(s) {missing} (they have {sorted(known)})")
    if not cfg.get("terminology"):
        raise fail("`terminology:` is missing: a TSV code<TAB>term or an OMOP vocabulary folder")
    models = cfg.get("model") or {}
    models = models if isinstance(models, dict) else {"*": models}
    if not all(isinstance(v, str) and v for v in models.values()):
        raise fail("`model:` must be a bi-encoder's location, or one per language")
    models = {("*" if str(k) in ("*", "default") else normalize_lang(str(k))): _resolve(v, base)
              for k, v in models.items()}
    filters = cfg.get("filters") or {}
    if not isinstance(filters, dict) or not all(filters.values()):
        raise fail("`filters:` must map OMOP columns to the values kept, e.g. "
                   "{vocabulary_id: [SNOMED]}")
    ngrams = cfg.get("ngrams", True)
    if not isinstance(ngrams, bool):
        raise fail("`ngrams:` must be true or false")
    if not ngrams and not models:
        raise fail("`ngrams: false` needs a `model:` (a bi-encoder) to link with")
    top, min_score = cfg.get("top", 10), cfg.get("min_score")
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= 100:
        raise fail("`top:` must be a whole number of codes from 1 to 100")
    if min_score is not None and (not isinstance(min_score, (int, float))
                                  or isinstance(min_score, bool) or not 0 <= min_score <= 1):
        raise fail("`min_score:` must be a similarity from 0 to 1")
    if min_score is not None and "*" in models and ngrams:
        raise fail("`min_score:` thresholds a lone method's similarities; with a model for "
                   "every language and `ngrams: true` their ranks are fused, which no threshold "
                   "applies to: set `ngrams: false` to threshold the model's similarity")
    return LinkerSpec(
        name=name, labels=tuple(labels), terminology=_resolve(str(cfg["terminology"]), base),
        system=str(cfg["system"]) if cfg.get("system") else None,
        filters={str(k): tuple(map(str, v if isinstance(v, list) else [v]))
                 for k, v in filters.items()},
        models=models, ngrams=ngrams, top=top,
        min_score=None if min_score is None else float(min_score))


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


def _parse(name: str, cfg: Any, base: str, open_models: bool) -> TaskSpec:
    def fail(msg: str) -> TaskFileError:
        return TaskFileError(f"task {name!r}: {msg}")

    if not _NAME_RE.match(name):
        raise fail("task names become file names: use letters, digits, '_', '.', '-'")
    if not isinstance(cfg, dict):
        raise fail("expected a mapping with `kind`, `model` and `languages`")
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r}; use one of {list(KINDS)}")
    unknown = sorted(map(str, set(cfg) - set(TASK_KEYS[kind])))
    if unknown:
        said = [f"{k!r} (did you mean {near[0]!r}?)" if (near := difflib.get_close_matches(
            k, TASK_KEYS[kind], 1)) else repr(k) for k in unknown]
        raise fail(f"unknown key(s) {', '.join(said)}; a task of kind {kind} has "
                   f"{list(TASK_KEYS[kind])}")
    if not cfg.get("model"):
        raise fail("`model:` is missing: a model directory, hub id or checkpoint path")
    model = _resolve(str(cfg["model"]), base)
    try:
        if cfg.get("revision") is not None and not isinstance(cfg["revision"], str):
            raise ValueError("`revision:` must be a branch, tag or commit, as a string")
        spec = (_parse_hf if kind == "hf" else _parse_mtl)(name, cfg, model, base, open_models)
        demonstration = cfg.get("demonstration", False)
        if not isinstance(demonstration, bool):
            raise ValueError("`demonstration:` must be true or false")
        spec = dataclasses.replace(spec, qualifies=_qualifies(cfg.get("qualifies"), spec),
                                   demonstration=demonstration or has_random_weights(model))
    except TaskFileError:
        raise
    except (ValueError, OSError) as e:
        raise fail(f"{e}{_relative_note(str(cfg['model']), model, base)}") from e
    return spec


def _relative_note(given: str, resolved: str, base: str) -> str:
    """Where a relative ``model:`` that was not found was looked for (else nothing)."""
    if "://" in given or given.startswith("/") or Path(resolved).exists():
        return ""
    return (f" (a relative path is looked for in the task file's folder "
            f"{os.path.abspath(base or '.')!r}, then in the working directory {os.getcwd()!r}; "
            "else it is taken for a hub id)")


def _qualifies(value: Any, spec: TaskSpec) -> dict[str, str]:
    """``qualifies:`` as entity label -> flag, each label one the model has (when known)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ValueError("`qualifies:` must map scope labels to flags, e.g. "
                         "{NSCO: negated, USCO: uncertain}")
    bad = {str(k): v for k, v in value.items() if v not in FLAGS}
    if bad:
        raise ValueError(f"`qualifies:` {bad}: a scope label sets one of {list(FLAGS)}")
    for head, labels in spec.labels.items():
        if not labels:  # not opened (spec-only check): labels unknown
            continue
        entities = spec.scheme(head).entities
        missing = sorted(str(k) for k in value if str(k) not in entities)
        if missing:
            raise ValueError(f"`qualifies:` names {missing}, which the model"
                             f"{f' head {head!r}' if head else ''} does not predict (its "
                             f"labels: {list(labels)}): fix the label names or the model")
    return {str(k): str(v) for k, v in value.items()}


def _languages(cfg: Mapping[str, Any], default: list[str]) -> tuple[str, ...]:
    langs = cfg.get("languages", default)
    if not isinstance(langs, list) or not langs:
        raise ValueError("`languages:` must be a non-empty list of ISO 639-1 codes")
    return tuple(dict.fromkeys(normalize_lang(x) for x in langs))


def _config(location: str, what: str, fix: str, revision: str | None = None) -> dict:
    """A model's or encoder's ``config.json`` (read as JSON: no torch, no transformers), or a
    ``ValueError`` saying what to fix."""
    import json
    from pathlib import Path

    check_location(location)
    try:
        if is_hub_id(location):
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(location.removeprefix("hf://"), "config.json",
                                   revision=revision)
        else:
            path = str(Path(localize(location)) / "config.json")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001 - the hub's errors are of many kinds: one message
        raise ValueError(f"cannot load the {what} config of {location!r} ({type(e).__name__}"
                         f"{hub_note(location)}). Fix: {fix}") from None


def check_encoder(location: str) -> None:
    """A bi-encoder that can be loaded: its config readable (hub or folder) and, in a local
    folder, its weights there; else a ``ValueError`` saying what to fix."""
    from pathlib import Path

    _config(location, "bi-encoder", "give `model:` a Hugging Face encoder folder or hub id")
    if not is_hub_id(location):
        folder = Path(localize(location))
        if not any((folder / w).exists() for w in ("model.safetensors", "pytorch_model.bin",
                                                   "model.safetensors.index.json")):
            raise ValueError(f"the bi-encoder {location!r} has no weights (model.safetensors "
                             "or pytorch_model.bin)")
        check_pickled_weights(str(folder))  # code in a pickle: refused here, not on a worker


def check_pickled_weights(location: str) -> None:
    """A local model folder whose weights are a pickle (``*.bin``, ``*.pt``; no safetensors) is
    read now as the workers will read it, with code refused (``weights_only``): one that
    carries code is a set-up error, not a worker's traceback (``ModelLoadError``)."""
    from pathlib import Path

    folder = Path(location)
    if "://" in location or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    from transforms.inference.models import load_state_dict

    for weights in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")):
        load_state_dict(str(weights))


def _shapes(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """The encoder's hidden and intermediate sizes (what its matrix products are made of)."""
    sizes = config.get("hidden_size"), config.get("intermediate_size")
    return (int(sizes[0]), int(sizes[1])) if all(isinstance(n, int) for n in sizes) else None


def _max_positions(config: Mapping[str, Any]) -> int | None:
    """Sub-words a window may hold, special tokens included (RoBERTa offsets positions by the
    padding index + 1)."""
    n = config.get("max_position_embeddings")
    if not n:
        return None
    pad = config.get("pad_token_id")
    return n - (pad + 1) if str(config.get("model_type", "")).endswith("roberta") and pad else n


def _parse_hf(name: str, cfg: Mapping[str, Any], model: str, base: str, open_models: bool
              ) -> TaskSpec:
    revision = cfg.get("revision")
    config = _config(model, "model", "point `model:` at a local directory with config.json "
                     "(download it once where a hub is reachable), or run where the hub is "
                     "reachable", revision) if open_models else {}
    labels = bio_scheme(config.get("id2label") or {}).id2label if open_models else ()
    if open_models:
        check_pickled_weights(model)
    langs = _languages(cfg, [])
    tokenizer = _resolve(str(cfg.get("tokenizer", model)), base)
    return TaskSpec(
        name=name, kind="hf", model=model, languages=langs, tokenizer=tokenizer,
        heads={lang: (None,) for lang in langs}, labels={None: labels},
        tokenizer_key=tokenizer_key(tokenizer), revision=revision,
        max_positions=_max_positions(config), shapes=_shapes(config),
    )


def _heads(cfg: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``heads:`` as language -> heads (a language may give one head or a list of them)."""
    heads_cfg = cfg.get("heads")
    if not isinstance(heads_cfg, dict) or not heads_cfg:
        raise ValueError("`heads:` must map each language to a head or a list of heads, e.g. "
                         "{es: symptom_es_ner} or {es: [disease, symptom, procedure]}")
    heads = {}
    for lang, value in heads_cfg.items():
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(h, str) and h for h in names):
            raise ValueError(f"`heads: {lang}:` must name one head or a list of heads")
        heads[normalize_lang(lang)] = tuple(dict.fromkeys(names))
    return heads


def _head_labels(cfg: Mapping[str, Any], head: str) -> list[str]:
    """A head's labels: ``labels:`` (a list for every head, or a mapping per head), else the
    DT4H order for the entity named by ``entity:`` or by the head."""
    labels = cfg.get("labels")
    if isinstance(labels, dict):
        labels = labels.get(head)
    if labels:
        return list(labels)
    entity = cfg.get("entity")
    if isinstance(entity, dict):
        entity = entity.get(head)
    return _default_labels(head, entity)


def _parse_mtl(name: str, cfg: Mapping[str, Any], model: str, base: str, open_models: bool
               ) -> TaskSpec:
    heads = _heads(cfg)
    langs = _languages(cfg, list(heads))
    no_head = [lang for lang in langs if lang not in heads]
    if no_head:
        raise ValueError(f"languages {no_head} have no entry in `heads:`")
    wanted = sorted({h for lang in langs for h in heads[lang]})
    found = _checkpoint_heads(model, cfg.get("revision"), wanted) if open_models else {}
    encoder = _resolve(str(cfg.get("encoder", "FacebookAI/xlm-roberta-base")), base)
    config = _config(encoder, "encoder", "set `encoder:` to a local xlm-roberta-base directory "
                     "(config and tokenizer)") if open_models else {}
    labels: dict[str | None, tuple[str, ...]] = {}
    for head in wanted:
        labs = bio_scheme(dict(enumerate(_head_labels(cfg, head)))).id2label
        n_out = found[head][0].shape[0] if open_models else len(labs)
        if len(labs) != n_out:
            raise ValueError(f"head {head!r} has {n_out} outputs but labels are {list(labs)}")
        labels[head] = labs
    tokenizer = _resolve(str(cfg.get("tokenizer", encoder)), base)
    return TaskSpec(
        name=name, kind="mtl", model=model, languages=langs, tokenizer=tokenizer,
        encoder=encoder, heads={lang: heads[lang] for lang in langs}, labels=labels,
        tokenizer_key=tokenizer_key(tokenizer), revision=cfg.get("revision"),
        max_positions=_max_positions(config), shapes=_shapes(config),
    )


def _checkpoint_heads(model: str, revision: str | None, wanted: list[str]) -> dict:
    """The checkpoint's heads (name -> weight, bias); every head in ``wanted`` must be one."""
    from transforms.inference.models import ModelLoadError, load_state_dict, mtl_heads

    check_location(model)
    try:
        found = mtl_heads(load_state_dict(model, revision))
    except ModelLoadError as e:
        raise ValueError(f"{e}{hub_note(model)}") from None
    missing = [h for h in wanted if h not in found]
    if missing:
        raise ValueError(
            f"checkpoint {model!r} has no head {missing}; its heads are {sorted(found)}. "
            "Fix `heads:` to name existing heads"
        )
    return found


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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_hub: dict[str, str] = {}  # "state": "reachable" | why it is not


def is_hub_id(location: str) -> bool:
    """Whether a model location names a hub repository (``org/name``) rather than a path."""
    from pathlib import Path

    return (location.startswith("hf://") or (
        "://" not in location and _HUB_ID.match(location) is not None
        and not Path(location).exists()))


def check_location(location: str) -> None:
    """Fail at once, in one line, on a local path that does not exist. For a hub id, check
    once per process that the hub answers within 5 s; if it does not, go offline, so that a
    model in the local hub cache loads at once and any other fails at once (not after minutes
    of retries) with a message that says so."""
    import os

    if not is_hub_id(location):
        if "://" not in location:
            from pathlib import Path

            if not Path(location).exists():
                raise ValueError(f"{location!r} does not exist")
        return
    if "state" not in _hub and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false"):
        import urllib.request

        from huggingface_hub import constants

        try:
            urllib.request.urlopen(constants.ENDPOINT, timeout=5).close()
            _hub["state"] = "reachable"
        except OSError as e:
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True
            _hub["state"] = f"the hub ({constants.ENDPOINT}) is unreachable from here " \
                            f"({type(e).__name__})"


def hub_note(location: str) -> str:
    """Why a hub model may have failed to load, if the hub could not be reached."""
    state = _hub.get("state", "reachable")
    return f"; {state}" if is_hub_id(location) and state != "reachable" else ""


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(location: str, revision: str | None) -> str | None:
    """The commit a hub model's ``revision`` (default ``main``) names now: itself when it is a
    commit id, else the hub's answer, else the local hub cache's ref (offline); None when
    neither knows it."""
    from pathlib import Path

    from huggingface_hub import constants

    from transforms.inference.models import hub_repo_file

    repo, rev = hub_repo_file(location)[0], revision or "main"
    if _COMMIT.match(rev):
        return rev
    check_location(location)
    if not constants.HF_HUB_OFFLINE:
        from huggingface_hub import HfApi

        try:
            return HfApi().model_info(repo, revision=rev).sha
        except Exception:  # noqa: BLE001 - unreachable or unknown: try the local cache
            pass
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / rev
    return ref.read_text().strip() if ref.is_file() else None


def pin_revisions(specs: Mapping[str, TaskSpec]) -> dict[str, TaskSpec]:
    """Each hub model pinned to the commit its revision names now, so that every worker loads
    that commit and the run records it (``run.json``, the shard markers' fingerprint); a hub
    model without ``revision:`` gets one warning. Local models are left as they are (their
    fingerprint is a content hash)."""
    pinned = {}
    for name, spec in specs.items():
        if not is_hub_id(spec.model):
            pinned[name] = spec
            continue
        commit = hub_commit(spec.model, spec.revision)
        if commit is None:
            raise TaskFileError(f"task {name!r}: cannot resolve revision "
                                f"{spec.revision or 'main'!r} of {spec.model!r}"
                                f"{hub_note(spec.model)}. Fix: give `revision:` a commit id, "
                                "or download the model once and point `model:` at it")
        if spec.revision is None:
            LOG.warning("task %s: %s is not pinned (no `revision:`): this run uses its commit "
                        "%s; add `revision: %s` to the task file to keep later runs on it",
                        name, spec.model, commit, commit)
        pinned[name] = dataclasses.replace(spec, revision=commit)
    return pinned


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tasks FILE...``: validate task files, print each task's model,
    languages and heads (``--open_models`` also opens every model, config and checkpoint)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.tasks",
                                 description=main.__doc__.replace("``", ""))
    ap.add_argument("files", nargs="+")
    ap.add_argument("--open_models", action="store_true",
                    help="also open the models (hub or files): labels and heads checked")
    args = ap.parse_args(argv)
    try:
        for path in args.files:
            specs = load_tasks(path, args.open_models)
            for name, spec in specs.items():
                heads = ", ".join(h for h in spec.all_heads if h) or "the model's"
                qualifies = "".join(f"; {label} -> {flag}"
                                    for label, flag in spec.qualifies.items())
                print(f"{path}: {name}: {spec.kind} {spec.model}; languages "
                      f"{' '.join(spec.languages)}; heads {heads}{qualifies}")
            for name, linker in load_linkers(path, specs).items():
                models = ", ".join(f"{k}={v}" for k, v in linker.models.items())
                print(f"{path}: linker {name}: codes {' '.join(linker.labels)} with "
                      f"{linker.terminology}; {models or 'character n-grams'}")
    except TaskFileError as e:
        raise SystemExit(f"pipeline.tasks: {e}") from None


if __name__ == "__main__":
    main()
