"""launch/quickstart.sh, the README's first command, in bash: in a copy of the checkout whose
.venv already has what it needs (the install step is the one part not run here; CI and the
README's timing run it from scratch), it copies the held-out cases, annotates them and writes
the report, and a second run finds nothing to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import HERMETIC_ENV, REPO, SHARED

pytestmark = pytest.mark.e2e


def test_the_quick_start_annotates_the_held_out_cases_and_writes_the_report(tmp_path):
    repo = tmp_path / "checkout"
    for part in ("launch", "pipeline", "transforms", "tasks"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shared").symlink_to(SHARED)  # ../shared beside the checkout, as the README says
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(repo / ".venv")],
                   check=True)
    env = {**os.environ, **HERMETIC_ENV}

    def quickstart() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "launch/quickstart.sh"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)

    first = quickstart()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "installing" not in first.stdout  # what it needs is there: not installed again
    assert len(list((repo / "data" / "heldout").glob("*.txt"))) == 100
    assert first.stdout.splitlines()[-2] == "out/report.html"
    page = (repo / "out" / "report.html").read_text(encoding="utf-8")
    assert "Made with a demonstration model" in page and "<td>all</td>" in page  # evaluated
    again = quickstart()
    assert again.returncode == 0 and "nothing to do" in again.stderr
