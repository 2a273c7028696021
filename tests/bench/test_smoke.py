"""Every benchmark runs, small: the same code as its full run, a tiny model or a few cases,
its figures printed as JSON (a bench nobody runs breaks unseen). bench.gpu and
bench.table_format have tests of their own."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import HERMETIC_ENV, REPO

pytestmark = pytest.mark.e2e

BENCHES = {
    "backends": (["--docs", "3", "--size", "tiny", "--runs", "torch:fp32,openvino:int8",
                  "--no_f1"], ("runs", "ceiling_gflops_per_s", "int8_matmul_gops_per_s")),
    "throughput": (["--docs", "2", "--size", "tiny", "--max_tokens", "128",
                    "--batch_tokens", "1024"], ("reference", "pipeline", "speedup_docs_per_s")),
    "whole": (["--docs", "3", "--size", "tiny"], ("pipeline_cold_s", "speedup_warm")),
    "evaluate": (["--spans", "2000"], ()),
    "feed": (["--smoke"], ("device_busy", "capacity_tokens_per_s")),
    "read": (["--docs", "50"], ()),
    "scale": (["--notes", "40"], ()),
    "language": (["--lingua_sample", "5"], ()),
    "startup": (["--runs", "1"], ("help", "typo")),
    "linking": (["--concepts", "500", "--sizes", "2000", "--dense_sizes", "1000",
                 "--skip_job"], ("calibration", "hpo", "ngram_speed", "dense_speed")),
}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_the_bench_runs_small_and_prints_its_figures(name, tmp_path):
    args, keys = BENCHES[name]
    out = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO,
                         env={**os.environ, **HERMETIC_ENV,
                              "CLINICAL_NER_CACHE": str(tmp_path / "cache")},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    start = out.stdout.index("{")
    figures = json.loads(out.stdout[start:])
    assert figures and all(k in figures for k in keys), sorted(figures)
