"""launch/nightly.sh as the Cloud Run job runs it: its arguments and environment, in bash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from tests.conftest import REPO


def nightly(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("PROJECT", "BUCKET", "IMAGE", "TEMPLATE", "TASKS", "GPU")}
    return subprocess.run(["bash", str(REPO / "launch" / "nightly.sh"), *args],
                          env={**base, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_script_reads_its_settings_from_the_environment_and_catches_up(tmp_path):
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    for day in (yesterday, yesterday - timedelta(days=3)):
        (tmp_path / "exports" / f"{day:%Y-%m-%d}").mkdir(parents=True)
        (tmp_path / "exports" / f"{day:%Y-%m-%d}" / "a.txt").write_text("x")
    done = nightly("--dry_run", "--force", "--param", "precision=bf16", PROJECT="p",
                   BUCKET=str(tmp_path), IMAGE="img", GPU="")
    assert done.returncode == 0, done.stderr
    bodies = [json.loads(line)["launchParameter"] for line in done.stdout.splitlines()]
    assert [b["jobName"] for b in bodies] == [
        f"clinical-ner-{d:%Y%m%d}" for d in (yesterday - timedelta(days=3), yesterday)]
    params, env = bodies[0]["parameters"], bodies[0]["environment"]
    assert params["force"] == "true" and params["precision"] == "bf16"
    assert params["tasks"] == f"{tmp_path}/config/tasks.yaml"
    assert env["machineType"] == "n2-highcpu-16"              # GPU='' : CPU workers
    assert not any("worker_accelerator" in o for o in env["additionalPipelineOptions"])


def test_a_bad_date_or_a_missing_setting_exits_2_with_a_reason(tmp_path):
    bad = nightly("2026-11-31", PROJECT="p", BUCKET=str(tmp_path), IMAGE="img")
    assert bad.returncode == 2 and "2026-11-31" in bad.stderr
    unset = nightly("--dry_run", BUCKET=str(tmp_path), IMAGE="img")
    assert unset.returncode == 2 and "set --project (or PROJECT)" in unset.stderr


def test_without_credentials_the_launcher_says_so_in_one_line(tmp_path):
    (tmp_path / "exports" / "2026-11-21").mkdir(parents=True)
    done = nightly("2026-11-21", PROJECT="p", BUCKET=str(tmp_path), IMAGE="img",
                   GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"),
                   CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "launch/nightly.sh: no Google Cloud credentials")
    assert "Traceback" not in done.stderr
