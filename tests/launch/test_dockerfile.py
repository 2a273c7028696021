"""The image holds what the scheduler and the workers run, with a torch the project accepts."""

from __future__ import annotations

import re

from packaging.specifiers import SpecifierSet

from tests.conftest import REPO


def test_the_image_holds_the_launch_files_and_a_torch_the_project_accepts():
    docker = (REPO / "launch" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", docker, re.M))
    assert {"pipeline", "transforms", "tasks", "launch"} <= copied
    scheduler = (REPO / "launch" / "scheduler.md").read_text()
    assert "--command launch/nightly.sh" in scheduler
    pinned = re.search(r"pip install --no-cache-dir torch==([0-9.]+)", docker).group(1)
    wanted = re.search(r'"torch([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned in SpecifierSet(wanted)
    # No index that stopped serving torch (cu124 ended with torch 2.6).
    assert "whl/cu124" not in docker
