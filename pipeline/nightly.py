"""Launch the nightly jobs from the Flex Template: ``python -m pipeline.nightly --help``.

One job per export date ``BUCKET/exports/DATE/`` -> ``BUCKET/annotations/DATE/``, named
``clinical-ner-YYYYMMDD``. Each call looks back over the last ``--catch_up_days`` days (or the
dates given), and launches a date only when

- its export exists,
- it is not done: no ``run.json`` in its output, or an export file changed after that run began
  (a late file), or ``--force``,
- no job of that name is still running (a long night is not launched twice).

It submits and exits (seconds): it runs as a Cloud Run job that Cloud Scheduler starts every
night (``launch/scheduler.md``), and a retry or a second call launches nothing twice. A night
that failed or never ran is caught up by the next call, oldest first, at most ``--max_launches``
per call. ``--dry_run`` prints the launch requests instead of sending them, and has the
Dataflow API validate them (``validateOnly``) when Google Cloud credentials are there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Protocol, Sequence

import fsspec

from transforms.io.storage import modified_time

LOG = logging.getLogger("pipeline.nightly")
API = "https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{region}"
# The driver Google's own Dataflow GPU samples ask for; launch/cuda_drivers.json says what the
# image's torch build needs from it (a test holds the two together).
DRIVER = "install-nvidia-driver:5xx"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where the nightly jobs read, write and run."""

    project: str
    region: str
    bucket: str
    template: str
    image: str
    tasks: str
    gpu: str = "nvidia-l4"
    machine_type: str = "g2-standard-8"
    max_workers: int = 8
    disk_size_gb: int = 100
    harness_threads: int = 2
    batch_tokens: int = 32768
    service_account: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    def job_name(self, day: date) -> str:
        """The job's name for a date (Dataflow refuses a second active job of the same name)."""
        return f"clinical-ner-{day:%Y%m%d}"

    def export(self, day: date) -> str:
        return f"{self.bucket.rstrip('/')}/exports/{day:%Y-%m-%d}/"

    def annotations(self, day: date) -> str:
        return f"{self.bucket.rstrip('/')}/annotations/{day:%Y-%m-%d}/"


class Dataflow(Protocol):
    """The Dataflow calls the launcher makes."""

    def active_jobs(self) -> set[str]: ...

    def launch(self, body: dict) -> str: ...

    def validate(self, body: dict) -> None: ...


class DataflowApi:
    """Dataflow's REST API with the application default credentials (the Cloud Run job's
    service account): list active jobs, launch a Flex Template."""

    def __init__(self, project: str, region: str):
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"])
        self.session = AuthorizedSession(credentials)
        self.base = API.format(project=project, region=region)

    def active_jobs(self) -> set[str]:
        names, token = set(), None
        while True:
            params = {"filter": "ACTIVE", **({"pageToken": token} if token else {})}
            reply = self.session.get(f"{self.base}/jobs", params=params, timeout=60)
            reply.raise_for_status()
            page = reply.json()
            names.update(job["name"] for job in page.get("jobs", []))
            token = page.get("nextPageToken")
            if not token:
                return names

    def launch(self, body: dict) -> str:
        reply = self.session.post(f"{self.base}/flexTemplates:launch", json=body, timeout=120)
        if reply.status_code == 409:  # a job of that name started since active_jobs()
            raise AlreadyRunning(body["launchParameter"]["jobName"])
        reply.raise_for_status()
        return reply.json().get("job", {}).get("id", "")

    def validate(self, body: dict) -> None:
        """Have Dataflow check a launch request without running it (``validateOnly``)."""
        reply = self.session.post(f"{self.base}/flexTemplates:launch",
                                  json={**body, "validateOnly": True}, timeout=120)
        if not reply.ok:
            raise RuntimeError(f"{reply.status_code}: {reply.text[:500]}")


class AlreadyRunning(Exception):
    """Dataflow refused a launch: a job of the same name is active."""


def launch_body(settings: Settings, day: date, force: bool) -> dict:
    """The Flex Template launch request of one date: the job's options as template
    parameters, the workers (GPU, threads, disk, image) as its environment. The GPU goes as a
    ``worker_accelerator`` experiment, as Google's Flex Template GPU samples pass it, and the
    job is told to need it (``device=cuda``: no GPU fails at model load, never runs the models
    on the CPUs)."""
    parameters = {"input": settings.export(day), "output": settings.annotations(day),
                  "tasks": settings.tasks, **settings.parameters}
    experiments = ["use_runner_v2"]
    if settings.gpu:  # a model copy in each SDK process, the processes sharing the GPU by MPS
        parameters.setdefault("batch_tokens", str(settings.batch_tokens))
        parameters.setdefault("device", "cuda")
        experiments.append(f"worker_accelerator=type:{settings.gpu};count:1;{DRIVER};"
                           "use_nvidia_mps")
    else:  # CPU workers convert the models: once for all of them, in the bucket
        parameters.setdefault("model_cache", f"{settings.bucket.rstrip('/')}/model-cache")
    if force:
        parameters["force"] = "true"
    environment = {
        "machineType": settings.machine_type, "maxWorkers": settings.max_workers,
        "diskSizeGb": settings.disk_size_gb, "sdkContainerImage": settings.image,
        "tempLocation": f"{settings.bucket.rstrip('/')}/tmp",
        "stagingLocation": f"{settings.bucket.rstrip('/')}/staging",
        "additionalExperiments": experiments,
        "additionalPipelineOptions": [
            f"number_of_worker_harness_threads={settings.harness_threads}"],
    }
    if settings.service_account:
        environment["serviceAccountEmail"] = settings.service_account
    return {"launchParameter": {"jobName": settings.job_name(day),
                                "containerSpecGcsPath": settings.template,
                                "parameters": parameters, "environment": environment}}


def state(settings: Settings, day: date) -> str:
    """``missing`` (no export), ``done``, ``late`` (an export file changed after the run began)
    or ``to_do``."""
    fs, root = fsspec.core.url_to_fs(settings.export(day))
    if not fs.exists(root):
        return "missing"
    record = settings.annotations(day) + "run.json"
    rfs, rpath = fsspec.core.url_to_fs(record)
    if not rfs.exists(rpath):
        return "to_do"
    try:
        with rfs.open(rpath, "rt", encoding="utf-8") as f:
            started = datetime.fromisoformat(json.load(f)["started"])
    except (ValueError, KeyError, TypeError):  # a run record that says no start: redo it
        LOG.warning("%s: no start time in it: the date is done again", record)
        return "to_do"
    changed = [modified_time(info) for info in fs.find(root, detail=True).values()]
    return "late" if any(c is not None and c > started for c in changed) else "done"


def plan(settings: Settings, days: Iterable[date], active: set[str], force: bool,
         max_launches: int) -> tuple[list[date], dict[date, str]]:
    """The dates to launch now (oldest first, at most ``max_launches``) and why each other
    date is left."""
    launch, left = [], {}
    for day in sorted(days):
        reason = state(settings, day)
        if reason == "missing":
            left[day] = "no export"
        elif settings.job_name(day) in active:
            left[day] = "still running"
        elif reason == "done" and not force:
            left[day] = "done"
        elif len(launch) >= max_launches:
            left[day] = "waits (max_launches reached)"
        else:
            launch.append(day)
    return launch, left


def recent_days(today: date, catch_up_days: int) -> list[date]:
    """Yesterday and the ``catch_up_days - 1`` days before it."""
    return [today - timedelta(days=n) for n in range(1, catch_up_days + 1)]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="launch/nightly.sh", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dates", nargs="*", type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="dates to launch (default: the last --catch_up_days days)")
    p.add_argument("--catch_up_days", type=int, default=7,
                   help="days looked back over, yesterday included (default %(default)s)")
    p.add_argument("--max_launches", type=int, default=2,
                   help="jobs launched per call at most, oldest first (default %(default)s)")
    p.add_argument("--force", action="store_true", help="redo the dates even if done")
    p.add_argument("--dry_run", action="store_true",
                   help="print the launch requests, launch nothing; with Google Cloud "
                        "credentials the Dataflow API validates them (validateOnly)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a further template parameter for every job (e.g. precision=bf16)")
    p.add_argument("--project", default=env("PROJECT"))
    p.add_argument("--region", default=env("REGION", "europe-west4"))
    p.add_argument("--bucket", default=env("BUCKET"), help="gs:// root: exports/, annotations/")
    p.add_argument("--template", default=env("TEMPLATE"),
                   help="the Flex Template file (default BUCKET/templates/clinical-ner.json)")
    p.add_argument("--image", default=env("IMAGE"), help="the container of launch/Dockerfile")
    p.add_argument("--tasks", default=env("TASKS"),
                   help="the task file (default BUCKET/config/tasks.yaml)")
    p.add_argument("--gpu", default=env("GPU", "nvidia-l4"), help="'' for CPU workers")
    p.add_argument("--max_workers", type=int, default=int(env("MAX_WORKERS", "8")))
    p.add_argument("--service_account", default=env("SERVICE_ACCOUNT"))
    args = p.parse_args(argv)
    missing = [n for n in ("project", "bucket", "image") if not getattr(args, n)]
    if missing:
        p.error("set " + ", ".join(f"--{n} (or {n.upper()})" for n in missing))
    bad = [x for x in args.param if "=" not in x]
    if bad:
        p.error(f"--param takes NAME=VALUE, got {bad[0]!r}")
    if args.catch_up_days < 1 or args.max_launches < 1:
        p.error("--catch_up_days and --max_launches must be at least 1")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    bucket = args.bucket.rstrip("/")
    cpu = not args.gpu
    return Settings(
        project=args.project, region=args.region, bucket=bucket,
        template=args.template or f"{bucket}/templates/clinical-ner.json", image=args.image,
        tasks=args.tasks or f"{bucket}/config/tasks.yaml", gpu=args.gpu,
        machine_type="n2-highcpu-16" if cpu else "g2-standard-8",
        harness_threads=4 if cpu else 2, max_workers=args.max_workers,
        service_account=args.service_account,
        parameters=dict(x.split("=", 1) for x in args.param))


def main(argv: Sequence[str] | None = None, dataflow: Dataflow | None = None,
         today: date | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = settings_from(args)
    days = args.dates or recent_days(today or datetime.now(timezone.utc).date(),
                                     args.catch_up_days)
    if dataflow is None:
        import google.auth.exceptions

        try:
            dataflow = DataflowApi(settings.project, settings.region)
        except google.auth.exceptions.DefaultCredentialsError:
            if not args.dry_run:
                raise SystemExit("launch/nightly.sh: no Google Cloud credentials: run it as a "
                                 "service account (the Cloud Run job's) or after `gcloud auth "
                                 "application-default login`; --dry_run needs none") from None
            LOG.warning("no Google Cloud credentials: the requests below are NOT validated "
                        "against the Dataflow API (`gcloud auth application-default login` "
                        "to have them validated)")
    try:
        active = dataflow.active_jobs() if dataflow is not None else set()
    except Exception as e:  # noqa: BLE001 - credentials there but unusable (an old login)
        if not args.dry_run:
            raise
        LOG.warning("the Dataflow API refused these credentials (%s): the requests below are "
                    "NOT validated against it", type(e).__name__)
        dataflow, active = None, set()
    launch, left = plan(settings, days, active, args.force, args.max_launches)
    for day, why in sorted(left.items()):
        LOG.info("%s: not launched: %s", day, why)
    failed = 0
    for day in launch:
        body = launch_body(settings, day, args.force)
        if args.dry_run:
            print(json.dumps(body, sort_keys=True))
            failed += dataflow is not None and not _validated(dataflow, day, body)
            continue
        try:
            job = dataflow.launch(body)
        except AlreadyRunning:
            LOG.info("%s: not launched: still running", day)
            continue
        except Exception as e:  # one date's refusal (quota, permissions) leaves the others
            failed += 1
            LOG.error("%s: launch failed: %s: %s", day, type(e).__name__, e)
            continue
        LOG.info("%s: launched %s (job %s)", day, settings.job_name(day), job)
    return 1 if failed else 0


def _validated(dataflow: Dataflow, day: date, body: dict) -> bool:
    """Whether the Dataflow API accepts one launch request (``validateOnly``); logs the answer."""
    try:
        dataflow.validate(body)
    except Exception as e:  # noqa: BLE001 - the API's refusal, reported per date
        LOG.error("%s: the Dataflow API refused the request: %s: %s", day, type(e).__name__, e)
        return False
    LOG.info("%s: the Dataflow API validated the request (validateOnly)", day)
    return True


if __name__ == "__main__":
    sys.exit(main())
