"""The same job on other runners: multi-process, the portable job API, and Dataflow's graph."""

import json
import shutil

import apache_beam as beam
import pytest

from pipeline.run import run
from transforms.io import fence
from tests.conftest import read_outputs, run_pipeline, spaccc_files

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    for f in spaccc_files(6, longest=1):
        shutil.copy(f, d / f.name)
    return d


@pytest.mark.parametrize("runner_args", [
    ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"],
    # one model copy shared by two worker processes through Beam's proxy (a GPU machine's way)
    ["--large_model", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
], ids=["multi_process", "portable", "large_model"])
def test_same_outputs_as_the_direct_runner(docs, smoke_tasks, tmp_path, runner_args):
    common = ["--input", str(docs), "--tasks", str(smoke_tasks), "--language", "es",
              "--precision", "fp32"]
    run_pipeline(*common, "--output", str(tmp_path / "direct"))
    run_pipeline(*common, "--output", str(tmp_path / "other"), *runner_args)
    direct, other = read_outputs(tmp_path / "direct"), read_outputs(tmp_path / "other")
    assert len(direct[0]["procedure"]) > 100
    assert other == direct


@pytest.fixture
def bucket(gcs_emulator):
    """``gs://bkt`` on the storage emulator: where a launch checks and takes the output."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", project="test")
    if not fs.exists("bkt"):
        fs.mkdir("bkt")
    return fs


def test_dataflow_job_graph_builds_offline(docs, smoke_tasks, bucket):
    result = run(["--runner", "DataflowRunner", "--project", "ehr-ner-test",
                  "--region", "europe-west4", "--temp_location", "gs://bkt/tmp",
                  "--dry_run", "True",
                  "--experiments", "use_runner_v2", "--input", str(docs),
                  "--output", "gs://bkt/out", "--tasks", str(smoke_tasks), "--language", "es",
                  "--inference_accelerator",
                  "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver:5xx"],
                 save_main_session=False)
    transforms = result.job.proto_pipeline.components.transforms.values()
    names = {t.unique_name: t for t in transforms}
    for step in ("ReadDocuments/ListShards", "ReadDocuments/CheckMarkers", "ReadDocuments/Read",
                 "Route", "Segment", "Group", "Infer_symptom", "Infer_procedure", "Decode",
                 "Qualify", "Render", "Write/WriteParts", "Write/Finalize",
                 "Write/MarkComplete", "RunRecord"):
        assert step in names
    # no step groups or reshuffles documents: the only groupings are of file names, shard
    # references and counts, upstream of the read or downstream of the writer
    grouping = sorted(n for n, t in names.items()
                      if t.spec.urn in ("beam:transform:group_by_key:v1",
                                        "beam:transform:reshuffle:v1") and "/" in n)
    assert any(n.startswith("Write/") for n in grouping)  # the duplicate-id references
    assert not [n for n in grouping
                if not n.startswith(("ReadDocuments/", "Write/"))], grouping
    hinted = [n for n, t in names.items() if t.environment_id and any(
        b"nvidia-l4" in v for v in result.job.proto_pipeline.components.environments[
            t.environment_id].resource_hints.values())]
    assert any(n.startswith("Infer_procedure") for n in hinted)
    assert not any(n.startswith(("ReadDocuments", "Route", "Segment", "Group", "Decode",
                                 "Qualify", "Render", "Write")) for n in hinted)


class _Submitted:
    """What a Flex Template launcher gets back: no job to wait for, no metrics to query."""

    def wait_until_finish(self):
        raise AssertionError("a launch must not wait for the job")

    def metrics(self):
        raise ValueError("Can not query metrics. Job id is unknown")


class _SubmitOnly(beam.runners.runner.PipelineRunner):
    def run_pipeline(self, pipeline, options):
        return _Submitted()


@pytest.fixture
def gcloud_login(monkeypatch):
    """This machine as one where ``gcloud auth application-default login`` was run: the
    credentials found are anonymous ones, which the storage emulator takes."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr(google.auth, "default",
                        lambda *args, **kwargs: (AnonymousCredentials(), "p"))


def test_a_launch_submits_and_returns_without_waiting(docs, smoke_tasks, bucket, gcloud_login):
    options = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west4",
               "--temp_location", "gs://bkt/tmp", "--input", str(docs), "--output",
               "gs://bkt/out", "--tasks", str(smoke_tasks), "--language", "es"]
    result = run(options, save_main_session=False,
                 test_pipeline=beam.Pipeline(runner=_SubmitOnly()))
    assert isinstance(result, _Submitted)
    # the job owns the output from its launch on: a job launched before it may not commit
    (entry,) = [e for e in fence.entries(bucket, "bkt/out") if e.kind == fence.OWN][-1:]
    assert entry.record["cluster"] is True


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_a_local_run_that_finds_cuda_gives_each_process_its_models_and_batches_for_a_gpu(
        docs, smoke_tasks, tmp_path, monkeypatch, cuda):
    import os

    import torch
    from apache_beam.options.pipeline_options import DirectOptions

    import pipeline.run as job

    built = {}

    def build(p, opts, specs, *args):
        built.update(workers=p._options.view_as(DirectOptions).direct_num_workers,
                     handler=job.infer(specs["procedure"], opts)._handler,
                     opts=opts)
        raise KeyboardInterrupt  # built: stop before anything runs

    shards = tmp_path / "shards"  # four read tasks (.txt files are read in batches)
    shards.mkdir()
    for i, f in enumerate(sorted(docs.glob("*.txt"))[:4]):
        record = {"id": f.stem, "text": f.read_text(encoding="utf-8")}
        (shards / f"{i}.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(job, "build", build)
    with pytest.raises(KeyboardInterrupt):
        run(["--input", str(shards), "--output", str(tmp_path / "out"), "--tasks", str(smoke_tasks),
             "--language", "es"], save_main_session=False)
    handler = built["handler"]
    assert handler.share_model_across_processes() is False  # a copy in each process
    assert handler._config.batch_tokens == (32768 if cuda else 8192)
    assert handler._config.max_batch_windows == (1024 if cuda else 256)
    assert handler._config.device == ("cuda" if cuda else "auto")  # turns on the GPU
    # with a GPU the CPU stages get two processes a core, one a read task at most
    assert built["workers"] == (4 if cuda else 1)


@pytest.mark.parametrize("runner_args", [
    ["--runner", "FlinkRunner", "--flink_master", "flink:8081", "--environment_type", "DOCKER"],
    ["--runner", "SparkRunner", "--spark_master_url", "spark://spark:7077"],
    ["--runner", "PortableRunner", "--job_endpoint", "jobserver:8099"],
], ids=["flink", "spark", "portable"])
def test_a_cluster_job_is_submitted_and_returns_like_dataflow(docs, smoke_tasks, tmp_path,
                                                              monkeypatch, runner_args):
    made, real = [], beam.Pipeline

    def pipeline(runner=None, options=None):
        made.append(runner)
        return real(runner=_SubmitOnly(), options=options)

    monkeypatch.setattr(beam, "Pipeline", pipeline)
    result = run(["--input", str(docs), "--output", str(tmp_path / "out"), "--tasks",
                  str(smoke_tasks), "--language", "es", *runner_args], save_main_session=False)
    assert isinstance(result, _Submitted) and made == [runner_args[1]]
    assert not (tmp_path / "out" / "_lock").exists()  # no local lock, no local planning
