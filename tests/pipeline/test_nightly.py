"""The nightly launcher: which dates it launches, the requests it sends, and its refusals."""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta, timezone

import pytest

from pipeline.nightly import (AlreadyRunning, Settings, launch_body, main, plan, recent_days,
                              state)
from tests.conftest import REPO

NOW = datetime.now(timezone.utc)


def settings(bucket) -> Settings:
    return Settings(project="p", region="europe-west4", bucket=str(bucket),
                    template="gs://b/templates/t.json", image="img", tasks="gs://b/tasks.yaml")


def export(bucket, day: str, name: str = "a.txt", age_s: float = 3600) -> None:
    path = bucket / "exports" / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    stamp = (NOW - timedelta(seconds=age_s)).timestamp()
    os.utime(path, (stamp, stamp))


def ran(bucket, day: str, started: datetime) -> None:
    out = bucket / "annotations" / day
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"started": started.isoformat()}))


def test_a_date_is_done_only_when_its_run_began_after_every_export_file(tmp_path):
    s = settings(tmp_path)
    export(tmp_path, "2026-11-20")
    ran(tmp_path, "2026-11-20", NOW - timedelta(minutes=30))
    export(tmp_path, "2026-11-21")
    export(tmp_path, "2026-11-19")
    ran(tmp_path, "2026-11-19", NOW - timedelta(minutes=30))
    export(tmp_path, "2026-11-19", "late.txt", age_s=60)   # arrived after the run began
    assert state(s, date(2026, 11, 20)) == "done"
    assert state(s, date(2026, 11, 21)) == "to_do"
    assert state(s, date(2026, 11, 19)) == "late"
    assert state(s, date(2026, 11, 22)) == "missing"


def test_plan_catches_up_oldest_first_and_skips_running_done_and_missing(tmp_path):
    s = settings(tmp_path)
    for day in ("2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20"):
        export(tmp_path, day)
    ran(tmp_path, "2026-11-20", NOW)
    days = recent_days(date(2026, 11, 23), 7)
    assert days[0] == date(2026, 11, 22) and days[-1] == date(2026, 11, 16)
    launch, left = plan(s, days, {"clinical-ner-20261117"}, force=False, max_launches=2)
    assert launch == [date(2026, 11, 16), date(2026, 11, 18)]
    assert left == {date(2026, 11, 17): "still running", date(2026, 11, 19): "waits (max_launches reached)",
                    date(2026, 11, 20): "done", date(2026, 11, 21): "no export",
                    date(2026, 11, 22): "no export"}
    launch, _ = plan(s, [date(2026, 11, 20)], set(), force=True, max_launches=2)
    assert launch == [date(2026, 11, 20)]


def test_the_launch_request_sets_the_gpu_the_disk_and_only_template_parameters(tmp_path):
    body = launch_body(settings("gs://b"), date(2026, 11, 21), force=True)["launchParameter"]
    assert body["jobName"] == "clinical-ner-20261121"
    params, env = body["parameters"], body["environment"]
    assert params["input"] == "gs://b/exports/2026-11-21/"
    assert params["output"] == "gs://b/annotations/2026-11-21/"
    assert params["force"] == "true" and "large_model" not in params  # a copy per process
    assert env["diskSizeGb"] == 100 and env["machineType"] == "g2-standard-8"
    assert env["additionalExperiments"] == [
        "use_runner_v2",
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:5xx;use_nvidia_mps"]
    assert params["device"] == "cuda"  # no GPU fails at model load, never runs on the CPUs
    assert env["additionalPipelineOptions"] == ["number_of_worker_harness_threads=2"]
    assert "model_cache" not in params  # GPUs run torch: nothing to convert
    cpu = launch_body(Settings(**{**settings("gs://b").__dict__, "gpu": ""}),
                      date(2026, 11, 21), force=False)["launchParameter"]["parameters"]
    assert cpu["model_cache"] == "gs://b/model-cache" and "device" not in cpu
    # Every parameter is one the template declares, in a form its regex accepts.
    declared = {p["name"]: p["regexes"][0] for p in json.loads(
        (REPO / "launch" / "flex_template_metadata.json").read_text())["parameters"]}
    for name, value in params.items():
        assert name in declared, name
        assert re.match(declared[name], value), (name, value)


class FakeDataflow:
    def __init__(self, active=(), refuse=()):
        self.active, self.refuse, self.launched = set(active), dict(refuse), []
        self.validated = []

    def validate(self, body):
        name = body["launchParameter"]["jobName"]
        if name in self.refuse:
            raise self.refuse[name]
        self.validated.append(name)

    def active_jobs(self):
        return self.active

    def launch(self, body):
        name = body["launchParameter"]["jobName"]
        if name in self.refuse:
            raise self.refuse[name]
        self.launched.append(name)
        return "job-" + name


def argv(bucket, *extra):
    return ["--project", "p", "--bucket", str(bucket), "--image", "img", *extra]


def test_main_launches_each_date_once_and_a_refused_launch_fails_the_call(tmp_path):
    for day in ("2026-11-20", "2026-11-21", "2026-11-22"):
        export(tmp_path, day)
    flow = FakeDataflow(refuse={"clinical-ner-20261120": AlreadyRunning("x"),
                                "clinical-ner-20261121": RuntimeError("quota")})
    code = main(argv(tmp_path, "--max_launches", "5"), flow, today=date(2026, 11, 23))
    assert flow.launched == ["clinical-ner-20261122"]   # the others were refused, not lost
    assert code == 1                                    # the quota refusal is a failed call
    flow = FakeDataflow(refuse={"clinical-ner-20261120": AlreadyRunning("x")})
    assert main(argv(tmp_path, "2026-11-20"), flow) == 0   # raced with itself: not a failure


def test_dry_run_without_credentials_prints_the_requests_and_says_they_are_unchecked(
        tmp_path, capsys, caplog, monkeypatch):
    import google.auth

    def no_credentials(**kwargs):
        raise google.auth.exceptions.DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    export(tmp_path, "2026-11-21")
    assert main(argv(tmp_path, "--dry_run", "2026-11-21")) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["launchParameter"]["jobName"] == "clinical-ner-20261121"
    assert "NOT validated against the Dataflow API" in caplog.text


def test_dry_run_with_credentials_has_the_api_validate_and_launches_nothing(tmp_path, capsys):
    for day in ("2026-11-20", "2026-11-21"):
        export(tmp_path, day)
    flow = FakeDataflow(refuse={"clinical-ner-20261120": RuntimeError("400: bad parameter")})
    assert main(argv(tmp_path, "--dry_run", "2026-11-20", "2026-11-21"), flow) == 1
    assert flow.validated == ["clinical-ner-20261121"] and flow.launched == []
    assert len(capsys.readouterr().out.splitlines()) == 2  # both requests printed


@pytest.mark.parametrize("args, message", [
    (["--bucket", "b", "--image", "i"], "set --project"),
    (["--project", "p", "--bucket", "b", "--image", "i", "2026-13-01"], "invalid fromisoformat"),
    (["--project", "p", "--bucket", "b", "--image", "i", "--param", "precision"], "NAME=VALUE"),
])
def test_bad_arguments_are_refused_with_a_reason(args, message, capsys, monkeypatch):
    for name in ("PROJECT", "BUCKET", "IMAGE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_dry_run_with_credentials_the_api_refuses_still_prints_the_requests(tmp_path, capsys,
                                                                           caplog):
    class Refusing(FakeDataflow):
        def active_jobs(self):
            raise RuntimeError("401: invalid_grant")

    export(tmp_path, "2026-11-21")
    assert main(argv(tmp_path, "--dry_run", "2026-11-21"), Refusing()) == 0
    assert json.loads(capsys.readouterr().out)["launchParameter"]["jobName"]
    assert "NOT validated" in caplog.text


def test_a_run_record_without_a_start_is_done_again(tmp_path):
    export(tmp_path, "2026-11-21")
    out = tmp_path / "annotations" / "2026-11-21"
    out.mkdir(parents=True)
    (out / "run.json").write_text("{}")
    assert state(settings(tmp_path), date(2026, 11, 21)) == "to_do"
