"""The table-format bench, tiny: both protocols end with the rows one clean history has."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_both_protocols_hold_the_rows_and_plain_readers_see_deltas_replaced_ones():
    pytest.importorskip("deltalake")
    out = subprocess.run([sys.executable, "-m", "bench.table_format", "--runs", "4", "--parts",
                          "2", "--docs", "5", "--spans", "2", "--redo", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    expected = 5 * 2 * 5 * 2  # four nights and the next one; the redo replaces rows
    for name in ("home", "delta"):
        assert figures[name]["rows_read"] == figures[name]["rows_expected"] == expected
    assert figures["delta"]["plain_reader_rows"] > expected  # the files the redo replaced
    killed = figures["delta"]["killed_writer"]
    assert killed["plain_reader_rows_added"] > killed["delta_rows_added"] == 0
