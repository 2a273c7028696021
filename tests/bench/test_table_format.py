"""The table-format bench, tiny: both protocols end with the rows one clean history has."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_both_protocols_hold_the_rows_plain_readers_and_stale_jobs_differ():
    pytest.importorskip("deltalake")
    out = subprocess.run([sys.executable, "-m", "bench.table_format", "--runs", "4", "--parts",
                          "2", "--docs", "5", "--spans", "2", "--redo", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    expected = 5 * 2 * 5 * 2  # four nights and the next one; the redo replaces rows
    for name in ("home", "delta", "delta_vacuumed"):
        assert figures[name]["rows_read"] == figures[name]["rows_expected"] == expected
    assert figures["delta"]["plain_reader_rows"] > expected  # the files the redo replaced
    assert figures["delta_vacuumed"]["plain_reader_rows"] == expected  # gone with a vacuum
    for name in ("delta", "delta_vacuumed"):  # but a killed writer's files stay visible
        killed = figures[name]["killed_writer"]
        assert killed["plain_reader_rows_added"] > killed["delta_rows_added"] == 0
    stale = figures["stale"]  # a stale job after a newer one, on the same shard
    assert stale["this_protocol"]["stale_commit_refused"] and stale["delta_replace"][
        "stale_commit_refused"] and not stale["delta_append"]["stale_commit_refused"]
    for case in stale.values():
        assert case["span_rows"] == case["span_rows_expected"] * (
            1 if case["stale_commit_refused"] else 2)
