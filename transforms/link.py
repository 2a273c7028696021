"""Mentions -> mentions coded against a terminology (the task file's ``linkers:``).

A stage of its own between qualifying and rendering, through ``RunInference`` like the NER
models (its model: every linker's index and bi-encoders, GPU when present). RunInference
batches documents; the mentions of a batch are linked together, each distinct string once per
worker. A mention whose label a linker covers gets its columns (``code``, ``code_term``,
``code_system``, ``concept_id``, ``link_score``, ``link_method``, ``link_candidates``: empty
when no code was found); the others keep them null. No mention is ever dropped.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from transforms.core.link import DENSE, NGRAM, link_columns, unlinked
from transforms.core.records import Row, Work
from transforms.core.spec import LinkerSpec

LOG = logging.getLogger("pipeline")


class Linkers(dict):
    """(linker, model) -> ``inference.linking.Linker``: the handler's model (a dict that Beam's
    shared model cache can hold a weak reference to)."""



READ_TRIES = 3  # a terminology replaced while it is read is read again, this many times at most


def _read_stable(spec: LinkerSpec) -> tuple[list, str]:
    """A linker's terms and the digest of the content they were read from: taken before
    reading and checked after, so that an index is never cached under the key of a file that
    was replaced meanwhile (it is read again; ``TerminologyError`` where it keeps changing)."""
    from transforms.io.terminology import TerminologyError, digest, read_terms

    for _ in range(READ_TRIES):
        before = digest(spec.terminology)
        terms = read_terms(spec.terminology, spec.system, spec.filters)
        if digest(spec.terminology) == before:
            return terms, before
    raise TerminologyError(f"linker {spec.name}: terminology {spec.terminology!r} changed "
                           f"while it was read, {READ_TRIES} times: run again once it is "
                           "written")


class LinkHandler(ModelHandler[Work, Work, Linkers]):
    """Every linker of the task file as one model: loaded (or built, then cached) once per
    worker; a batch of documents in, the same documents with their mentions coded out."""

    def __init__(self, linkers: Mapping[str, LinkerSpec], device: str = "auto",
                 model_cache: str | None = None) -> None:
        self._linkers, self._device, self._shared = dict(linkers), device, model_cache
        self._by_label = {label: spec for spec in linkers.values() for label in spec.labels}

    def load_model(self) -> Linkers:
        from transforms.inference.linking import build_or_load, index_key

        device = self._device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = Linkers()
        for spec in self._linkers.values():
            terms, content = _read_stable(spec)
            source = repr((spec.terminology, spec.system, sorted(spec.filters.items())))
            models = set(spec.models.values()) | (set() if "*" in spec.models else {None})
            for model in sorted(models, key=str):
                ngrams = spec.ngrams or model is None
                loaded[(spec.name, model)] = build_or_load(
                    terms, index_key(source, model, content, ngrams), model, device,
                    ngrams=ngrams, shared=self._shared, top=spec.top,
                    min_score=spec.threshold(NGRAM if model is None else DENSE))
        return loaded

    def run_inference(self, batch: Sequence[Work], model: Linkers,
                      inference_args: Mapping[str, Any] | None = None) -> Iterable[Work]:
        wanted: dict[tuple[str, str | None, str | None], list[tuple[int, int]]] = {}
        for d, work in enumerate(batch):
            for m, row in enumerate(work.mentions):
                spec = self._by_label.get(row["label"])
                if spec is not None:
                    key = (spec.name, spec.model(row["lang"]), row["lang"])
                    wanted.setdefault(key, []).append((d, m))
        columns: dict[tuple[int, int], dict] = {}
        for (name, encoder, lang), places in wanted.items():
            linker = model[(name, encoder)]
            found = linker.link([batch[d].mentions[m]["text"] for d, m in places], lang)
            for place, candidates in zip(places, found):
                columns[place] = link_columns(candidates, linker.terms)
        return [work.with_(mentions=tuple(
            Row(row, **columns.get((d, m), unlinked(False))) for m, row in
            enumerate(work.mentions))) for d, work in enumerate(batch)]

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 256}

    def get_metrics_namespace(self) -> str:
        return "linking"


class LinkMentions(beam.PTransform):
    """Documents -> the same documents with their mentions coded (``LinkHandler``)."""

    def __init__(self, linkers: Mapping[str, LinkerSpec], device: str = "auto",
                 model_cache: str | None = None) -> None:
        super().__init__()
        self._handler = LinkHandler(linkers, device, model_cache)

    def expand(self, docs):
        return docs | "RunInference" >> RunInference(self._handler)
