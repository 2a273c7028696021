"""How fast the command line answers: ``python -m bench.startup [--runs 10]``.

Times ``python -m pipeline.run --help``, ``--help_all`` and a mistyped option as whole
processes, ``--runs`` times each, and prints the median and the slowest in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {"help": ["--help"], "help_all": ["--help_all"],
            "typo": ["--input", "in", "--output", "out", "--tasks", "t.yaml", "--langauge", "es"]}


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.run", *args], capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    runs = ap.parse_args().runs
    figures = {}
    for name, args in COMMANDS.items():
        times = [timed(args) for _ in range(runs)]
        figures[name] = {"median_s": round(statistics.median(times), 2),
                         "max_s": round(max(times), 2)}
    figures["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
