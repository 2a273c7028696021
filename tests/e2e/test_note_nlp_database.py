"""NOTE_NLP rows with concept ids load into a real PostgreSQL with the README's load, twice
without a duplicate, and a query by concept finds the notes; DuckDB reads the same files."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SPACCC, run_pipeline
from tests.fixtures.terminology import HELDOUT, task_file

pytestmark = pytest.mark.e2e
# the OMOP CDM v5.4 PostgreSQL DDL of NOTE_NLP, then the README's change of its key to bigint
DDL = """
CREATE SCHEMA cdm;
CREATE TABLE cdm.note_nlp (note_nlp_id integer NOT NULL, note_id integer NOT NULL,
  section_concept_id integer NULL, snippet varchar(250) NULL, "offset" varchar(50) NULL,
  lexical_variant varchar(250) NOT NULL, note_nlp_concept_id integer NOT NULL,
  note_nlp_source_concept_id integer NULL, nlp_system varchar(250) NULL, nlp_date date NOT NULL,
  nlp_datetime TIMESTAMP NULL, term_exists varchar(1) NULL, term_temporal varchar(50) NULL,
  term_modifiers varchar(2000) NULL);
ALTER TABLE cdm.note_nlp ADD CONSTRAINT xpk_note_nlp PRIMARY KEY (note_nlp_id);
ALTER TABLE cdm.note_nlp ALTER COLUMN note_nlp_id TYPE bigint;
"""


@pytest.fixture
def postgres():
    """A PostgreSQL server of this machine's (Debian's ``postgresql``), started for the test
    as the ``postgres`` user on a socket of its own; yields a ``psql`` runner."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("psql")):
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True,
                       capture_output=True)
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="pg-"))  # the server's user must reach it
    os.chmod(base, 0o755)
    data, sock = base / "data", base / "sock"
    for d in (data, sock):
        d.mkdir()
        shutil.chown(d, "postgres", "postgres")
    as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    subprocess.run([*as_pg, initdb, "-D", str(data), "-A", "trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-w", "-l", str(sock / "log"),
                    "-o", f"-k {sock} -c listen_addresses=''", "start"], check=True,
                   capture_output=True)

    def psql(sql: str, cwd=None) -> str:
        return subprocess.run(["psql", "-h", str(sock), "-U", "postgres", "-v",
                               "ON_ERROR_STOP=1", "-At", "-c" if "\n" not in sql else "-f",
                               sql if "\n" not in sql else "/dev/stdin"],
                              input=sql if "\n" in sql else None, capture_output=True,
                              text=True, check=True, cwd=cwd).stdout
    try:
        yield psql
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_note_nlp_loads_into_postgresql_idempotently_and_answers_by_concept(terms, postgres,
                                                                           tmp_path):
    folder, _ = terms
    notes = tmp_path / "notes"
    notes.mkdir()
    ids = {doc_id: 7000 + n for n, doc_id in enumerate(HELDOUT[:6])}
    (notes / "notes.jsonl").write_text("".join(json.dumps({
        "id": doc_id, "note_id": ids[doc_id],
        "text": (SPACCC / "txt" / f"{doc_id}.txt").read_text(encoding="utf-8")}) + "\n"
        for doc_id in ids), encoding="utf-8")
    out = tmp_path / "out"
    run_pipeline("--input", str(notes), "--output", str(out), "--tasks",
                 str(task_file(folder, "omop")), "--language", "es", "--write", "note_nlp",
                 "--note_id_field", "note_id")
    csvs = sorted((out / "note_nlp" / "csv").glob("*.csv"))
    load = "CREATE TEMP TABLE note_nlp_in (LIKE cdm.note_nlp);\n" + "".join(
        f"\\copy note_nlp_in FROM '{f}' WITH (FORMAT csv, HEADER true)\n" for f in csvs) + (
        "INSERT INTO cdm.note_nlp SELECT * FROM note_nlp_in ON CONFLICT (note_nlp_id) "
        "DO NOTHING;\n")
    postgres(DDL)
    postgres(load)
    rows = int(postgres("SELECT count(*) FROM cdm.note_nlp"))
    postgres(load)  # the same files again: no duplicate
    assert int(postgres("SELECT count(*) FROM cdm.note_nlp")) == rows > 20
    spans = pd.read_parquet(out / "spans")
    concept = int(spans.concept_id.dropna().mode()[0])
    want = sorted({ids[d] for d in spans[spans.concept_id == concept].doc_id})
    got = postgres(f"SELECT DISTINCT note_id FROM cdm.note_nlp WHERE note_nlp_concept_id = "
                   f"{concept} ORDER BY 1").split()
    assert [int(n) for n in got] == want and len(want) >= 1

    import duckdb

    parquet = str(out / "note_nlp" / "parquet" / "*.parquet")
    duck = duckdb.sql(f"SELECT count(*), count(DISTINCT note_id) FROM '{parquet}' "
                      f"WHERE note_nlp_concept_id = {concept}").fetchall()[0]
    assert duck[1] == len(want) and duck[0] == int(postgres(
        f"SELECT count(*) FROM cdm.note_nlp WHERE note_nlp_concept_id = {concept}"))
