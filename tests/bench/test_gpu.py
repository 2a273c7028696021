"""The GPU kit (``python -m bench.gpu``): its dry run is the GPU run's code on the CPU."""

import json
import os
import subprocess
import sys

import pytest

from bench.gpu import DRY, spec_peak, summary
from tests.conftest import HERMETIC_ENV, REPO


@pytest.mark.e2e
def test_the_dry_run_runs_every_stage_of_the_gpu_run(tmp_path):
    env = {**os.environ, **HERMETIC_ENV, "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry_run", "--kit",
                           str(tmp_path / "no-kit"), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    stages = report["stages"]
    assert not [k for k, v in stages.items() if "error" in v or "skipped" in v]
    runs = stages["model_path"]["runs"]
    assert set(runs) == {f"{b}" for b in DRY.budgets} | {f"{DRY.budgets[-1]} compiled"}
    for name, row in runs.items():  # each budget is the one asked for, and used
        budget = int(name.split()[0])
        assert budget / 2 < row["largest_batch_tokens"] <= budget, name
        assert row["real_tokens"] == runs[str(DRY.budgets[0])]["real_tokens"] > 0
        assert 0 < row["mfu_measured"] and 0 <= row["padding_fraction"] < 0.5
    for name, tasks, notes in (("job_1_task", 1, DRY.notes), ("job_1_task_shared", 1, DRY.notes),
                               ("job_2_tasks", 2, DRY.notes // 2),
                               ("job_2_tasks_shared", 2, DRY.notes // 2),
                               ("job_profile", 1, DRY.profile_notes)):
        job = stages[name]
        assert job["ok"] and job["documents_annotated"] == notes == job["notes"]
        assert job["models_loaded_in"]  # the process ids, from the job's log
        assert ("--large_model true" in job["options"]) == name.endswith("_shared")
        assert job["counts"]["documents/read"] == notes
        assert {k for k in job["counts"] if k.startswith("documents/lang_")} == {
            "documents/lang_es", "documents/lang_en", "documents/lang_it"}
        assert len([k for k in job["counts"] if k.startswith("tokens/real_")]) == tasks
        # heads biased to O: about as many mentions as a real model finds (bias_to_o), not
        # the ten times a random head gives, whose decoding and writing the host would pay
        assert 8 < job["spans_per_document"] / tasks < 30, job["spans_per_document"]
    oom = stages["fault_out_of_memory"]
    sizes = [n for n, _ in oom["calls"]]
    assert oom["ok"] and sizes[0] == DRY.oom_windows and oom["calls"][0][1] != "ok"
    assert [n for n, outcome in oom["calls"] if outcome == "ok"] == [2] * (DRY.oom_windows // 2)
    assert oom["documents_equal_to_unconstrained"] == 1.0
    fault = stages["fault_accelerator_error"]
    assert fault["ok"] and fault["rc"] != 0 and fault["committed"] == []
    assert fault["stopped_on"] == "ModelFault" and not fault["timed_out"]
    hot = {f.split(":")[0] + f[f.index("("):]: cumulative for f, _, _, cumulative in
           stages["job_profile"]["profile"]["ours_by_cumulative"]}  # without line numbers
    assert 0 < hot["transforms/handlers.py(run_inference)"] < hot["pipeline/run.py(run)"]
    assert (tmp_path / "out" / "job_profile.prof").stat().st_size > 0
    text = (tmp_path / "out" / "gpu.md").read_text()
    assert "fault_out_of_memory: holds" in text and f"| 2 | {DRY.notes // 2} |" in text


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H200", 989.4),
                                       ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 PCIe", 756.0),
                                       ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0),
                                       ("NVIDIA L40", 181.0), ("Quadro X", None)])
def test_spec_peaks_by_device_name(name, peak):
    assert spec_peak(name) == peak


def test_a_stage_that_failed_or_was_skipped_is_named_in_the_summary():
    report = {"started": "now", "environment": {"device": "NVIDIA H200"},
              "stages": {"ceiling": {"error": "RuntimeError: boom"},
                         "model_path": {"runs_as": "torch bfloat16", "documents": 3, "runs": {
                             "32768 compiled": {"error": "BackendCompilerFailed: no cc"}}},
                         "job_1_task": {"skipped": "10 s left, 60 s needed"}}}
    text = summary(report)
    assert text.startswith("# GPU kit: NVIDIA H200")
    assert "| 32768 compiled | BackendCompilerFailed: no cc |" in text
    assert "- ceiling: RuntimeError: boom" in text
    assert "- job_1_task: 10 s left, 60 s needed" in text
