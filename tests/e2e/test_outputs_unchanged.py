"""The outputs a change of the code's shape must not change: the quick start (the 100 held-out
SPACCC cases, torch fp32) with records that exercise the rules (a duplicate id, a record without
text, a broken gzip file), and the opt-in CDM and NOTE_NLP outputs of real cases, equal what the
code wrote before the house was rebuilt (``tests/fixtures/outputs/``, its README says how they
were made). ``python -m tests.e2e.test_outputs_unchanged DIR`` writes them again."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, SPACCC, run_pipeline
from transforms.core.link import LINK_COLUMNS

pytestmark = pytest.mark.e2e
FIXTURE = REPO / "tests" / "fixtures" / "outputs"
HELDOUT = (SHARED / "models" / "probe-es" / "heldout.txt").read_text().split()
COMMON = ("--tasks", str(REPO / "tasks" / "probe-es.yaml"), "--language", "es",
          "--backend", "torch", "--precision", "fp32")
# what differs from run to run or clone to clone (the code's version, the model's path)
RUN_FIELDS = ("nlp_processing_date", "nlp_processing_pipeline_version", "service_version",
              "service_model")


def quick_start_input(folder: Path) -> Path:
    """The quick start's cases, a JSONL file whose second record repeats the first one's id
    and whose third has no text, and a gzip file cut short."""
    folder.mkdir(parents=True)
    for doc_id in HELDOUT:
        shutil.copy(SPACCC / "txt" / f"{doc_id}.txt", folder / f"{doc_id}.txt")
    text = (SPACCC / "txt" / f"{HELDOUT[0]}.txt").read_text(encoding="utf-8")
    records = [{"id": "dup", "text": text}, {"id": "dup", "text": text[:200]}, {"id": "empty"}]
    (folder / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "broken.jsonl.gz").write_bytes(gzip.compress(text.encode())[:100])
    return folder


def opt_in_input(folder: Path) -> Path:
    """Six held-out cases as JSONL records with integer note ids, the last one without."""
    folder.mkdir(parents=True)
    lines = []
    for n, doc_id in enumerate(HELDOUT[:6]):
        text = (SPACCC / "txt" / f"{doc_id}.txt").read_text(encoding="utf-8")
        lines.append(json.dumps({"id": doc_id, "text": text,
                                 **({"note_id": 1000 + n} if n < 5 else {})}) + "\n")
    (folder / "notes.jsonl").write_text("".join(lines))
    return folder


def _scrub(value):
    """A CDM document without what changes from run to run."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in RUN_FIELDS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _note(doc: dict) -> str:
    """A CDM document's record id."""
    return doc["nlp_output"]["record_metadata"]["record_id"]


def _same(got, want) -> bool:
    """Equal, numbers within 1e-4 (batches of other shapes change a probability's last
    digits, as the tables' rows, rounded to 4 decimals, allow)."""
    if isinstance(got, dict):
        return (isinstance(want, dict) and got.keys() == want.keys()
                and all(_same(got[k], want[k]) for k in got))
    if isinstance(got, list):
        return (isinstance(want, list) and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want)))
    if isinstance(got, float) and isinstance(want, float):
        return abs(got - want) <= 1e-4
    return got == want


def snapshot(quick: Path, opt_in: Path) -> dict[str, list]:
    """Every row the two runs wrote, sorted, as JSON-ready lists (``source`` as a file name)."""
    import pandas as pd

    def rows(folder: Path, drop=()) -> list:
        table = pd.read_parquet(folder).drop(columns=list(drop))
        if "source" in table:
            table["source"] = table["source"].map(lambda s: Path(s).name)
        table = table.astype(object).where(table.notna(), None)
        return sorted(([round(v, 4) if isinstance(v, float) else v for v in r]
                       for r in table.values.tolist()), key=json.dumps)

    snap = {f"{t}.tsv": sorted((quick / f"{t}.tsv").read_text(encoding="utf-8").splitlines())
            for t in ("symptom", "procedure")}
    spans = pd.read_parquet(quick / "spans")
    assert spans[list(LINK_COLUMNS)].isna().all().all()  # added since, null without a linker
    snap["spans"] = rows(quick / "spans", drop=LINK_COLUMNS)
    for kind in ("documents", "errors"):
        snap[kind] = rows(quick / kind)
    snap["note_nlp"] = rows(opt_in / "note_nlp" / "parquet", drop=("nlp_date", "nlp_datetime",
                                                                     "nlp_system"))
    snap["cdm"] = sorted((json.dumps(_scrub(json.loads(line)), sort_keys=True)
                          for f in sorted((opt_in / "cdm").glob("*.jsonl"))
                          for line in f.read_text(encoding="utf-8").splitlines()))
    return snap


def run_both(tmp: Path) -> dict[str, list]:
    quick, opt_in = tmp / "quick", tmp / "opt_in"
    run_pipeline("--input", str(quick_start_input(tmp / "in")), "--output", str(quick),
                 *COMMON)
    run_pipeline("--input", str(opt_in_input(tmp / "notes")), "--output", str(opt_in),
                 "--write", "cdm,note_nlp", "--note_id_field", "note_id", *COMMON)
    return json.loads(json.dumps(snapshot(quick, opt_in)).replace(str(tmp), "TMP"))


def test_the_outputs_equal_those_written_before_the_house_was_rebuilt(tmp_path):
    got = run_both(tmp_path)
    assert len(got["spans"]) > 2000 and got["errors"] and got["note_nlp"] and got["cdm"]
    for name, rows in got.items():
        want = json.loads((FIXTURE / f"{name}.json").read_text(encoding="utf-8"))
        if name == "cdm":  # in order of their notes (their records' ids)
            got_docs, want_docs = ([json.loads(doc) for doc in docs] for docs in (rows, want))
            assert _same(sorted(got_docs, key=_note), sorted(want_docs, key=_note))
        else:  # a probability's fourth decimal may round the other way on another CPU
            assert _same(rows, want), name


if __name__ == "__main__":
    import tempfile

    target = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in run_both(Path(tmp)).items():
            (target / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0),
                                                 encoding="utf-8")
