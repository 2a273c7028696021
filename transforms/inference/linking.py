"""A linker's model: a terminology's index (exact forms, character n-gram TF-IDF vectors, and
with a bi-encoder its terms' dense vectors), built once per terminology and model and kept in
the local cache (with ``--model_cache``, built by one machine of a job and shared with the
others, as the OpenVINO conversions are), and the search that codes a batch of mention strings.

Character n-grams are TF-IDF vectors of ``char_wb`` 3-grams (as scispaCy's linker; sublinear
tf, L2 rows; n-grams of more than ``MAX_DF`` terms left out), searched by one sparse product per
chunk of mentions. A dense encoder is a
Hugging Face encoder (ClinLinker, SapBERT: their [CLS] vector, L2-normalised), searched by
inner product. Each distinct mention string is searched once per worker (``Linker.cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from array import array
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from transforms.core.link import (DENSE, EXACT, NGRAM, Candidate, Term, by_code, char_ngrams,
                                  fuse, normalize)
from transforms.io.storage import cache_root, localize, tree_digest

LOG = logging.getLogger("pipeline")
INDEX_VERSION = 3  # bump when what an index holds changes: older cached ones are rebuilt
CACHE_STRINGS = 200_000  # mention strings remembered per linker and worker
# n-grams in more terms than this are not searched by (they still weigh in a form's norm):
# they weigh little (low IDF) and would make every search touch most of a large terminology
# (bench.linking: at 1M terms, 60x faster, the same accuracy on HPO)
MAX_DF = 5000
CHUNK = 256  # mention strings scored at a time (a chunk's scores against every term in memory)


def best(terms: np.ndarray, scores: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` highest ``scores`` with their ``terms``, best first (ties: lower term)."""
    if len(scores) > top:
        keep = np.argpartition(-scores, top - 1)[:top]
        terms, scores = terms[keep], scores[keep]
    order = np.lexsort((terms, -scores))
    return list(zip(terms[order].tolist(), scores[order].tolist()))


class NgramIndex:
    """Character 3-gram TF-IDF vectors of the terms' normalised forms (``forms``), or as
    ``save`` wrote them (``folder``): plain arrays and a JSON vocabulary, never a pickle (an
    index may come from a shared location). A form's similarity to a term counts every n-gram
    of the form: one the terminology never has (weighted as the rarest) lowers it.

    The weights are scikit-learn's ``TfidfVectorizer(analyzer="char_wb", sublinear_tf=True)``
    (smooth idf, L2 rows; the tests hold them to it), computed here: importing scikit-learn
    cost every worker about a second, 10% of a 100-document job."""

    def __init__(self, forms: Sequence[str] | None = None, folder: Path | None = None) -> None:
        from scipy import sparse

        if folder is None:
            self.vocabulary = {}
            indptr, cols, tfs = array("i", [0]), array("i"), array("f")  # as scikit-learn
            for form in forms:
                for gram, tf in Counter(char_ngrams(form)).items():
                    cols.append(self.vocabulary.setdefault(gram, len(self.vocabulary)))
                    tfs.append(tf)
                indptr.append(len(cols))
            grams = np.frombuffer(cols, np.int32)
            df = np.bincount(grams, minlength=len(self.vocabulary))
            self.idf = np.log((1 + len(forms)) / (1 + df)) + 1
            weights = (1 + np.log(np.frombuffer(tfs, np.float32))) * self.idf.astype(
                np.float32)[grams]
            rows = sparse.csr_matrix((weights, grams, np.frombuffer(indptr, np.int32)),
                                     shape=(len(forms), len(self.vocabulary)))
            norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
            rows.data /= np.repeat(np.maximum(norms, 1e-12), np.diff(rows.indptr))  # L2 rows
            matrix = rows.T.tocsr()  # n-grams x terms
            matrix.data[np.repeat(df > MAX_DF, df)] = 0  # searched by their rarer n-grams
            matrix.eliminate_zeros()
            self.matrix = matrix
        else:
            grams = json.loads((folder / "ngrams.json").read_text(encoding="utf-8"))
            self.vocabulary = {gram: j for j, gram in enumerate(grams)}
            self.idf = np.load(folder / "idf.npy")
            self.matrix = sparse.load_npz(folder / "ngrams.npz").tocsr()
        self._idf = self.idf.tolist()  # a Python float per n-gram: looked up one by one
        self._unseen = float(np.log(1 + self.matrix.shape[1]) + 1)  # idf of a df of 0

    def save(self, folder: Path) -> None:
        from scipy import sparse

        grams = sorted(self.vocabulary, key=self.vocabulary.get)
        (folder / "ngrams.json").write_text(json.dumps(grams), encoding="utf-8")
        np.save(folder / "idf.npy", self.idf)
        sparse.save_npz(folder / "ngrams.npz", self.matrix)

    def vectors(self, forms: Sequence[str]):
        """The forms' TF-IDF rows over the terminology's n-grams (sublinear tf), each divided
        by the norm of all its n-grams' weights, known or not: a form's cosine to a term is
        scaled down by the share of its weight the terminology has never seen."""
        from scipy import sparse

        indptr, cols, data = array("q", [0]), array("q"), array("f")
        for form in forms:
            known, norm = [], 0.0
            for gram, tf in Counter(char_ngrams(form)).items():
                j = self.vocabulary.get(gram)
                weight = (1 + math.log(tf)) * (self._unseen if j is None else self._idf[j])
                norm += weight * weight
                if j is not None:
                    known.append((j, weight))
            scale = 1 / math.sqrt(norm) if norm else 0.0
            cols.extend(j for j, _ in known)
            data.extend(weight * scale for _, weight in known)
            indptr.append(len(cols))
        return sparse.csr_matrix((np.frombuffer(data, np.float32), np.frombuffer(cols, np.int64),
                                  np.frombuffer(indptr, np.int64)),
                                 shape=(len(forms), len(self.vocabulary)))

    def search(self, forms: Sequence[str], top: int, allowed: np.ndarray | None = None
               ) -> list[list[Candidate]]:
        """The ``top`` nearest terms of each form (ties: the first term) among the ``allowed``
        ones (a mask over the terms; None: all), a chunk of forms at a time (memory bounded by
        the index and a chunk)."""
        out = []
        for lo in range(0, len(forms), CHUNK):
            scores = (self.vectors(forms[lo:lo + CHUNK]) @ self.matrix).tocsr()
            for i in range(scores.shape[0]):
                a, b = scores.indptr[i], scores.indptr[i + 1]
                terms, found = scores.indices[a:b], scores.data[a:b]
                if allowed is not None:
                    terms, found = terms[allowed[terms]], found[allowed[terms]]
                out.append([Candidate(int(t), float(s), NGRAM)
                            for t, s in best(terms, found, top)])
        return out


class DenseEncoder:
    """A bi-encoder: texts -> L2-normalised [CLS] vectors, on ``device``."""

    def __init__(self, location: str, device: str = "cpu", batch: int = 64) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        location = localize(location)  # gs://, s3://: this worker's copy
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModel.from_pretrained(location).to(device).eval()
        self.device, self.batch = device, batch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch):
                enc = self.tokenizer(list(texts[i:i + self.batch]), padding=True,
                                     truncation=True, max_length=32, return_tensors="pt")
                hidden = self.model(**enc.to(self.device)).last_hidden_state[:, 0]
                out.append(torch.nn.functional.normalize(hidden.float(), dim=-1).cpu().numpy())
        size = self.model.config.hidden_size
        return np.concatenate(out) if out else np.zeros((0, size), np.float32)


class Linker:
    """Codes mention strings against one terminology: exact normalised match first; else
    the nearest terms by character n-grams, by a dense encoder, or both with their ranks
    fused. A term with a language codes the mentions of that language only. ``top``:
    candidate codes kept per mention; ``min_score``: a candidate below it (of one method
    alone; fused ranks are not similarities) is dropped, and a mention without any stays
    uncoded (jobs pass ``LinkerSpec.threshold``; 0 here ranks everything, as the bench
    needs)."""

    def __init__(self, terms: Sequence[Term], forms: Sequence[str], index: NgramIndex | None,
                 encoder: DenseEncoder | None = None, vectors: np.ndarray | None = None,
                 top: int = 10, min_score: float = 0.0) -> None:
        self.terms, self.ngrams, self.encoder, self.vectors = terms, index, encoder, vectors
        self.top, self.min_score = top, min_score
        self.exact: dict[str, list[int]] = {}  # a normalised form -> its terms (``forms``)
        for i, form in enumerate(forms):
            self.exact.setdefault(form, []).append(i)
        self.cache: OrderedDict[tuple[str | None, str], list[Candidate]] = OrderedDict()
        self._multilingual = any(t.language for t in terms)
        self._masks: dict[str, np.ndarray] = {}

    def link(self, mentions: Sequence[str], lang: str | None = None) -> list[list[Candidate]]:
        """Each mention's candidates (mentions of language ``lang``), best first, one per
        code (empty: none found)."""
        forms = [normalize(m) for m in mentions]
        todo = list(dict.fromkeys(f for f in forms if (lang, f) not in self.cache))
        exact = {f: [i for i in self.exact.get(f, ()) if self._speaks(i, lang)] for f in todo}
        near = [f for f in todo if not exact[f]]
        found = dict(zip(near, self._nearest(near, self._allowed(lang)))) if near else {}
        for form in todo:
            candidates = [Candidate(i, 1.0, EXACT) for i in exact[form]] or found[form]
            self.cache[(lang, form)] = by_code(candidates, self.terms)[:self.top]
            if len(self.cache) > CACHE_STRINGS:
                self.cache.popitem(last=False)
        return [self.cache[(lang, f)] if f else [] for f in forms]

    def _speaks(self, term: int, lang: str | None) -> bool:
        """Whether a term may code a mention of ``lang`` (a term without a language may)."""
        return lang is None or self.terms[term].language in (None, lang)

    def _allowed(self, lang: str | None) -> np.ndarray | None:
        """A mask of the terms that may code a mention of ``lang`` (None: every term may),
        applied before the nearest are picked: terms of other languages never crowd out the
        mention's own."""
        if lang is None or not self._multilingual:
            return None
        if lang not in self._masks:
            self._masks[lang] = np.array([self._speaks(i, lang) for i in range(len(self.terms))])
        return self._masks[lang]

    def _nearest(self, forms: list[str], allowed: np.ndarray | None
                 ) -> list[list[Candidate]]:
        wide = 4 * self.top  # several terms of one code: keep enough to fill ``top`` codes
        methods = []
        if self.ngrams is not None:
            methods.append(self.ngrams.search(forms, wide, allowed))
        if self.encoder is not None:
            methods.append(self._dense(forms, wide, allowed))
        if len(methods) == 1:
            return [[c for c in ranked if c.score >= self.min_score] for ranked in methods[0]]
        return [fuse([m[i] for m in methods], top=wide) for i in range(len(forms))]

    def _dense(self, forms: list[str], top: int, allowed: np.ndarray | None
               ) -> list[list[Candidate]]:
        out = []
        terms = np.arange(len(self.terms)) if allowed is None else np.flatnonzero(allowed)
        for lo in range(0, len(forms), CHUNK):
            scores = self.encoder.encode(forms[lo:lo + CHUNK]) @ self.vectors.T
            out += [[Candidate(int(t), float(s), DENSE) for t, s in best(terms, row[terms], top)]
                    for row in scores]
        return out


def model_digest(location: str | None) -> str | None:
    """A bi-encoder's content: its files' ``tree_digest`` (a remote one's current version, as
    this worker copied it); a hub id as it is (no model: None)."""
    if location is None:
        return None
    path = Path(localize(location))
    return tree_digest(path)[0] if path.exists() else location


def index_key(terminology: str, model: str | None, digest: str, ngrams: bool = True) -> str:
    """The cache key of a terminology's index: its content, the model's (its location and
    ``model_digest``: a model rewritten in place encodes its terms again), what the index holds
    (n-grams or not), the index format."""
    return hashlib.sha256(json.dumps([INDEX_VERSION, terminology, model, model_digest(model),
                                      digest, ngrams]).encode()).hexdigest()[:24]


def build_or_load(terms: Sequence[Term], key: str, model: str | None, device: str = "cpu",
                  ngrams: bool = True, cache: Path | None = None, shared: str | None = None,
                  **options) -> Linker:
    """The linker of ``terms``: its index (the n-gram vectors, and with ``model`` the terms'
    dense vectors) from the local cache by ``key``; else from ``shared`` (``--model_cache``:
    built by one machine of the job, read by the others); else built here and kept (and
    published to ``shared``)."""
    from filelock import FileLock

    from transforms.io.shared_cache import ensure

    folder = (cache or cache_root()) / "linking" / key
    encoder = DenseEncoder(model, device) if model else None
    forms = [normalize(t.term) for t in terms]

    def build(into: Path) -> None:
        started = time.perf_counter()
        if ngrams:
            NgramIndex(forms).save(into)
        if encoder is not None:
            np.save(into / "vectors.npy", encoder.encode([t.term for t in terms]))
        LOG.info("linker index %s: built in %.1f s (%d terms)", key,
                 time.perf_counter() - started, len(terms))

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # this machine's processes
        how = ensure(folder, build, shared and f"{shared.rstrip('/')}/linking/{key}")
    LOG.info("linker index %s: %s (%d terms)", key, how, len(terms))
    index = NgramIndex(folder=folder) if ngrams else None
    vectors = np.load(folder / "vectors.npy") if encoder is not None else None
    return Linker(terms, forms, index, encoder, vectors, **options)
