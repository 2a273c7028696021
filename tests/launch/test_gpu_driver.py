"""The image's torch build and the driver the launch asks Dataflow for agree by construction."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO

TABLE = json.loads((REPO / "launch" / "cuda_drivers.json").read_text())
# every file that launches GPU workers or tells a user how to
LAUNCHERS = ("launch/scheduler.md", "launch/README.md", "README.md", "pipeline/nightly.py",
             "pipeline/cli.py", "docs/gpu.md")


def image_build() -> str:
    """The torch index launch/Dockerfile installs from by default."""
    docker = (REPO / "launch" / "Dockerfile").read_text()
    return re.search(r"^ARG TORCH_INDEX=(\S+)", docker, re.M).group(1)


def driver_options() -> dict[str, set[str]]:
    """Each ``install-nvidia-driver`` option in the launch files, with the files using it."""
    found: dict[str, set[str]] = {}
    for name in LAUNCHERS:
        path = REPO / name
        if path.exists():
            for option in re.findall(r"install-nvidia-driver(?::\w+)?", path.read_text()):
                found.setdefault(option, set()).add(name)
    return found


def test_the_image_torch_runs_on_every_driver_the_launch_files_ask_for():
    build = TABLE["torch_builds"][image_build()]  # an index not in the table: add it, cited
    options = driver_options()
    assert options, "no launch file asks for a GPU driver"
    for option, files in options.items():
        assert option in TABLE["driver_options"], f"{option} ({files}) is not in the table"
        given = TABLE["driver_options"][option]["min_driver"]
        assert build["min_driver"] <= given, (
            f"torch's CUDA {build['cuda']} build needs driver >= {build['min_driver']}, but "
            f"{option} ({', '.join(sorted(files))}) is only documented to give >= {given}")


def test_the_table_cites_a_source_for_every_row():
    for section in ("torch_builds", "driver_options"):
        for row in TABLE[section].values():
            assert "http" in row["source"] or "/" in row["source"]
