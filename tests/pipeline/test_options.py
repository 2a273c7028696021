"""The command line: every option listed with its default, typos refused with the fix."""

import subprocess
import sys

import pytest

from pipeline.options import AnnotateOptions, boolean, parse_options
from tests.conftest import REPO


BASE = ["--input", "i", "--output", "o", "--tasks", "t"]


def opts(*args: str) -> AnnotateOptions:
    return parse_options([*BASE, *args]).view_as(AnnotateOptions)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_the_jobs_options_grouped_with_their_defaults_and_no_runners():
    out = cli("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for group in ("input and output:", "tasks and languages:", "inference:"):
        assert group in text
    for option, default in (("--max_tokens", "512"),
                            ("--batch_tokens", "32768 with a GPU, 8192 on a CPU"),
                            ("--precision", "auto"), ("--id_field", "id"),
                            ("--min_lang_confidence", "0.2"), ("--force", "False")):
        after = text[text.index(option + " "):]
        assert f"default: {default}" in after[:600], option
    assert "default: None" not in text and "(default: )" not in text and "`" not in text
    assert text.count("a quarter of --max_tokens") == 1  # --overlap's default, once
    assert "Beam:" not in text and "--runner RUNNER" not in text and "--help_all" in text


def test_help_all_adds_every_runners_options():
    text = " ".join(cli("--help_all").stdout.split())
    assert text.index("input and output:") < text.index("Beam: GoogleCloudOptions:")
    for group in ("Beam: DirectOptions:", "Beam: WorkerOptions:"):
        assert group in text
    for option in ("--input", "--tasks", "--runner", "--project", "--region",
                   "--temp_location", "--direct_num_workers", "--machine_type"):
        assert f"{option} " in text, option
    workers = text[text.index("--direct_num_workers "):][:300]
    assert "default: 1)" not in workers and "one per core" in workers


def test_help_and_typos_are_answered_before_beam_loads():
    for args in (["--help"], ["--input", "i", "--output", "o", "--tasks", "t", "--langauge"]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.run", *args],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == (0 if args == ["--help"] else 2)
        loaded = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
                  if line.startswith("import time:")}
        assert not {m for m in loaded if m.split(".")[0] in ("apache_beam", "torch",
                                                              "transformers")}, args


def test_the_beam_option_names_are_the_installed_beams():
    from pipeline.beam_flags import BEAM_SWITCHES, BEAM_VALUED
    from pipeline.options import beam_flags

    assert (list(BEAM_SWITCHES), list(BEAM_VALUED)) == beam_flags(), \
        "regenerate: python -m pipeline.options --beam_flags > pipeline/beam_flags.py"


@pytest.mark.parametrize("args, message", [
    ([], "missing required option(s) --input, --output, --tasks"),
    (["--input", "i", "--output", "o"], "missing required option(s) --tasks"),
    ([*BASE, "--max_tokens", "many"], "argument --max_tokens: invalid int value"),
    ([*BASE, "--max_tokens", "4"], "need --max_tokens >= 8"),
    ([*BASE, "--write", "csv"], "--write csv: unknown output"),
    ([*BASE, "--language", "es", "--detect_language"], "contradict each other"),
    ([*BASE, "--split_bytes", "-100"], "--split_bytes must be at least 1"),
    ([*BASE, "--torch_threads", "-2"], "--torch_threads must be 0"),
    ([*BASE, "--min_lang_confidence", "5"], "between 0 and 1"),
    ([*BASE, "--runner", "DataflowRunnr"], "Unexpected pipeline runner: DataflowRunnr"),
    ([*BASE, "--runner", "DataflowRunner"], "needs --project, --region, --temp_location"),
])
def test_every_mistake_in_the_command_line_exits_2_with_the_usage(args, message):
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: python -m pipeline.run")
    assert message in out.stderr


def test_a_set_up_error_exits_1(tmp_path):
    out = cli(*BASE[:4], "--tasks", str(tmp_path / "missing.yaml"))
    assert out.returncode == 1 and "missing.yaml" in out.stderr


@pytest.mark.parametrize("typo,fix", [("--langauge", "--language"), ("--ouput", "--output"),
                                      ("--batch_token", "--batch_tokens"),
                                      ("--direct_num_worker", "--direct_num_workers")])
def test_a_mistyped_option_is_an_error_naming_the_nearest(typo, fix, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["--input", "in", "--output", "out", "--tasks", "t.yaml", typo, "es"])
    assert exit_info.value.code == 2
    assert f"unknown option {typo}; did you mean {fix}?" in capsys.readouterr().err


def test_the_cli_refuses_a_typo_before_anything_runs(tmp_path):
    out = cli("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--tasks", "none.yaml",
              "--langauge", "es")
    assert out.returncode == 2
    assert "unknown option --langauge; did you mean --language?" in out.stderr
    assert not (tmp_path / "o").exists()


def test_flags_take_explicit_values_as_templates_pass_them():
    assert opts().force is False and opts("--force").force is True
    assert opts("--force=false").force is False and opts("--large_model", "true").large_model
    assert opts("--reference_compat=1").reference_compat is True
    with pytest.raises(Exception):
        boolean("maybe")


def test_beam_runner_options_pass_through():
    options = parse_options(["--input", "i", "--output", "o", "--tasks", "t", "--runner",
                             "DataflowRunner", "--experiments", "use_runner_v2",
                             "--dataflow_service_options",
                             "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"])
    all_options = options.get_all_options()
    assert all_options["runner"] == "DataflowRunner"
    assert all_options["experiments"] == ["use_runner_v2"]


def test_the_flex_template_metadata_is_the_options():
    import json
    import re

    from pipeline.options import template_metadata

    committed = json.loads((REPO / "launch" / "flex_template_metadata.json").read_text())
    assert committed == template_metadata(), "regenerate: python -m pipeline.options " \
                                             "--template_metadata > launch/flex_template_metadata.json"
    params = {p["name"]: p for p in committed["parameters"]}
    assert {"input", "output", "tasks", "force", "inference_accelerator", "max_tokens",
            "input_format", "id_field", "text_field", "lang_field", "large_model"} <= set(params)
    assert [n for n, p in params.items() if not p.get("isOptional")] == ["input", "output",
                                                                          "tasks"]
    samples = {"^(true|false)$": "true", "^[0-9]+$": "512", "^[0-9]*[.]?[0-9]+$": "0.2",
               "^gs://.+$": "gs://b/x", "^.+$": "es"}
    for name, p in params.items():
        (regex,) = p["regexes"]
        value = samples.get(regex) or regex.strip("^$()").split("|")[0]
        assert re.match(regex, value)
        parsed = parse_options([*BASE, f"--{name}={value}"]).view_as(AnnotateOptions)
        assert getattr(parsed, name) is not None, name  # the template's value reaches the job


def test_a_worker_accelerator_means_a_gpu_is_required():
    from pipeline.options import wants_gpu

    assert not wants_gpu(parse_options(BASE))
    assert wants_gpu(parse_options([*BASE, "--dataflow_service_options",
                                    "worker_accelerator=type:nvidia-l4;count:1;"
                                    "install-nvidia-driver"]))
    assert wants_gpu(parse_options([*BASE, "--inference_accelerator", "type:nvidia-l4;count:1"]))
    assert wants_gpu(parse_options([*BASE, "--device", "cuda"]))


@pytest.mark.parametrize("args, ok", [
    (["--precision", "int8"], False), (["--precision", "int8", "--backend", "torch"], False),
    (["--precision", "int8", "--backend", "openvino"], True), (["--backend", "torch"], True),
])
def test_int8_is_an_openvino_precision(args, ok):
    parsed = opts(*args)
    if ok:
        parsed.validate_required()
    else:
        with pytest.raises(SystemExit) as stop:
            parsed.validate_required()
        assert stop.value.code == 2


@pytest.mark.parametrize("gpu,want", [(True, (32768, 1024, False)), (False, (8192, 256, False))])
def test_the_device_decides_the_defaults_left_open(gpu, want):
    o = opts()
    o.apply_device_defaults(gpu)
    assert (o.batch_tokens, o.max_batch_windows, o.large_model) == want
    given = opts("--batch_tokens", "4096", "--max_batch_windows", "64", "--large_model=false")
    given.apply_device_defaults(gpu)
    assert (given.batch_tokens, given.max_batch_windows, given.large_model) == (4096, 64, False)


def test_the_models_use_a_gpu_when_asked_for_or_found_by_a_local_run(monkeypatch):
    import torch

    from pipeline.options import uses_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not uses_gpu(parse_options(BASE), local=True)
    assert uses_gpu(parse_options([*BASE, "--device", "cuda"]), local=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert uses_gpu(parse_options(BASE), local=True)
    assert not uses_gpu(parse_options([*BASE, "--device", "cpu"]), local=True)
    assert not uses_gpu(parse_options(BASE), local=False)  # a launcher's CUDA is not the job's


def test_auto_precision_on_a_cpu_torch_path_is_decided_once_and_recorded(monkeypatch, tmp_path):
    from pipeline.options import cpu_precisions
    from pipeline.summary import job_config
    from transforms.inference import backends
    from transforms.core.spec import TaskSpec

    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    backends.fastest_cpu_dtype.cache_clear()
    # timed fp32, bf16, fp16: first bf16 is fastest, then fp32 (a close call, timed again)
    rates = iter([1.0, 2.0, 1.0] + [3.0, 1.0, 1.0] * 3)
    monkeypatch.setattr(backends, "matmul_rate", lambda *a, **k: next(rates))
    spec = TaskSpec(name="t", kind="hf", model="m", languages=("es",), tokenizer="tok",
                    shapes=(768, 3072))
    o = opts("--backend", "torch")
    decided = cpu_precisions(o, {"t": spec}, gpu=False)
    assert decided == {"t": "bf16"}
    backends.fastest_cpu_dtype.cache_clear()
    assert cpu_precisions(o, {"t": spec}, gpu=False) == decided  # kept, not timed again
    assert job_config(o, {"t": spec}, decided)["precision_decided"] == {"t": "bf16"}
    assert cpu_precisions(o, {"t": spec}, gpu=True) == {}
    assert cpu_precisions(opts("--precision", "fp16"), {"t": spec}, gpu=False) == {}
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    # OpenVINO int8: bf16 float parts recorded (on AMX), fp32 ones as before (not recorded)
    monkeypatch.setattr(backends, "int8_float_parts", lambda: "bf16")
    assert cpu_precisions(opts(), {"t": spec}, gpu=False) == {"t": "int8, float parts in bf16"}
    compat = opts("--reference_compat", "--backend", "openvino", "--precision", "int8")
    assert cpu_precisions(compat, {"t": spec}, gpu=False) == {"t": "int8, float parts in bf16"}
    monkeypatch.setattr(backends, "int8_float_parts", lambda: "fp32")
    assert cpu_precisions(opts(), {"t": spec}, gpu=False) == {}
    backends.fastest_cpu_dtype.cache_clear()


@pytest.mark.parametrize("value,said", [
    ("spanish", "--language 'spanish' is not a language code: give an ISO 639-1 code, e.g. cs, "
                "en, es"),
    ("fr", "--language fr: no task of "),
])
def test_a_language_no_task_takes_is_refused_before_reading(smoke_tasks, tmp_path, value, said):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Fiebre alta.")
    proc = cli("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--tasks",
               str(smoke_tasks), "--language", value)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines()[-1].startswith(f"pipeline.run: {said}")


def test_a_language_alias_becomes_its_code(smoke_tasks):
    from pipeline.run import check_language
    from pipeline.tasks import load_tasks

    o = opts("--language", "CZ")
    check_language(load_tasks(str(smoke_tasks)), o)
    assert o.language == "cs"


def test_an_unquoted_glob_is_named_as_one(tmp_path):
    for name in ("a.jsonl.gz", "b.jsonl.gz", "c.jsonl.gz"):
        (tmp_path / name).write_bytes(b"")
    expanded = sorted(str(p) for p in tmp_path.glob("*.jsonl.gz"))  # what the shell passes
    proc = cli("--input", *expanded, "--output", "o", "--tasks", "t.yaml")
    assert proc.returncode == 2
    assert f"unexpected argument {expanded[1]}: quote a pattern" in proc.stderr
    assert "--input 'dir/*.jsonl.gz' (it gave 3 paths)" in proc.stderr


@pytest.mark.parametrize("args, here", [
    ([], True), (["--runner", "PrismRunner"], True),
    (["--runner", "PortableRunner", "--job_endpoint", "embed"], True),
    (["--runner", "PortableRunner", "--job_endpoint", "flink-jobserver:8099"], False),
    (["--runner", "FlinkRunner"], True), (["--runner", "FlinkRunner", "--flink_master", "[local]"],
                                          True),
    (["--runner", "FlinkRunner", "--flink_master", "flink:8081"], False),
    (["--runner", "SparkRunner"], True),
    (["--runner", "SparkRunner", "--spark_master_url", "spark://spark:7077"], False),
    (["--runner", "DataflowRunner"], False),
])
def test_cluster_runners_are_submitted_to_and_local_ones_waited_for(args, here):
    from pipeline.run import runs_here

    assert runs_here(parse_options([*BASE, *args])) is here


@pytest.mark.parametrize("args, message", [
    (["--inference_accelerator", "type:nvidia-l4;count:1;install-nvidia-driver:5xx"],
     "needs its machine type"),
    (["--inference_accelerator", "type:nvidia-l4;count:1;machine_type:n2-standard-8"],
     "only on G2 machine types, not n2-standard-8"),
    (["--machine_type", "n1-standard-8", "--dataflow_service_options",
      "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:5xx"], "not n1-standard-8"),
    (["--inference_accelerator", "type:nvidia-l4;count:1;machine_type:g2-standard-8",
      "--experiments", "worker_accelerator=type:nvidia-l4;count:1"], "contradict"),
])
def test_dataflow_gpu_options_that_cannot_work_are_refused_before_anything_runs(args, message,
                                                                                capsys):
    from pipeline.options import check_accelerators

    with pytest.raises(SystemExit) as stop:
        check_accelerators(parse_options([*BASE, *args]))
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_gpu_options_that_work_pass_and_an_experiment_asks_for_a_gpu_too():
    from pipeline.options import check_accelerators, wants_gpu

    for args in (["--inference_accelerator",
                  "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver:5xx"],
                 ["--machine_type", "g2-standard-8", "--experiments",
                  "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:5xx"]):
        options = parse_options([*BASE, *args])
        check_accelerators(options)
        assert wants_gpu(options)


def test_a_dataflow_launch_with_the_image_needs_the_images_python():
    from pipeline.options import IMAGE_PYTHON, check_launch_python

    launch = parse_options([*BASE, "--runner", "DataflowRunner", "--sdk_container_image", "i"])
    check_launch_python(launch, IMAGE_PYTHON)
    with pytest.raises(SystemExit, match="launch from the image"):
        check_launch_python(launch, (3, IMAGE_PYTHON[1] + 1))
    check_launch_python(parse_options([*BASE, "--runner", "DataflowRunner"]), (3, 99))
    docker = (REPO / "launch" / "Dockerfile").read_text()
    assert f"beam_python{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}_sdk" in docker


@pytest.mark.parametrize("module, prog", [
    ("pipeline.run", "python -m pipeline.run"), ("pipeline.prepare", "python -m pipeline.prepare"),
    ("pipeline.evaluate", "python -m pipeline.evaluate"),
    ("pipeline.report", "python -m pipeline.report"),
    ("pipeline.tasks", "python -m pipeline.tasks"), ("pipeline.nightly", "launch/nightly.sh")])
def test_every_command_s_help_names_it_and_shows_no_markup(module, prog):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {prog}")
    assert "`" not in out.stdout


def test_dataflow_without_credentials_stops_in_one_line_before_anything_is_staged(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Fiebre.")
    out = subprocess.run([sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "in"),
                          "--output", "gs://made-up-bucket/out", "--tasks",
                          str(REPO / "tasks" / "probe-es.yaml"), "--runner", "DataflowRunner",
                          "--project", "made-up", "--region", "europe-west4",
                          "--temp_location", "gs://made-up-bucket/tmp"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("pipeline.run: --runner DataflowRunner: ")
    assert "gcloud auth application-default login" in last
    assert "Traceback" not in out.stderr and "anonymous" not in out.stderr.lower()
