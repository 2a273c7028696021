"""Shared fixtures: real data from ../shared and tiny random-weight models built at test time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "xlm-roberta-base"
SPACCC = SHARED / "corpora" / "spaccc-es"
E3C = SHARED / "corpora" / "e3c-layer3"

# Never reach a model hub or download a runner binary: any network attempt fails at once.
HERMETIC_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}
os.environ.update({k: v for k, v in HERMETIC_ENV.items() if k.startswith(("HF_", "TRANSF"))})
# gcsfs probes each bucket's type over gRPC first; against the emulator that times out (60 s).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


def pytest_addoption(parser) -> None:
    parser.addoption("--e2e", action="store_true",
                     help="also run the end-to-end tests (python -m pipeline.run in a "
                          "subprocess, storage emulators, a browser); CI runs them")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "e2e: end to end (runs the real job); needs --e2e")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--e2e"):
        return
    selected = [i for i in items if "e2e" not in i.keywords]
    deselected = [i for i in items if "e2e" in i.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def spaccc_files(n: int, longest: int = 0) -> list[Path]:
    """The first ``n`` SPACCC documents by name plus the ``longest`` largest ones."""
    files = sorted((SPACCC / "txt").glob("*.txt"))
    big = sorted(files, key=lambda f: f.stat().st_size)[-longest:] if longest else []
    return sorted(set(files[:n]) | set(big))


def read_text(path: Path) -> str:
    """A document exactly as stored (no newline translation)."""
    return path.read_bytes().decode("utf-8")


def read_outputs(out: Path, tasks=("procedure", "symptom")) -> tuple[dict, list]:
    """A run's TSV rows per task and document rows (without ``source``), sorted: what two runs
    must agree on."""
    import pandas as pd

    tsv = {t: sorted(pd.read_csv(out / f"{t}.tsv", sep="\t", keep_default_na=False)
                     .itertuples(index=False, name=None)) for t in tasks}
    documents = pd.read_parquet(out / "documents").drop(columns=["source"])
    documents = documents.astype(object).where(documents.notna(), None)  # NaN != NaN
    return tsv, sorted(documents.itertuples(index=False, name=None))


def run_pipeline(*args: str, check: bool = True, env: dict | None = None
                 ) -> subprocess.CompletedProcess:
    """``python -m pipeline.run ARGS`` in a hermetic environment; output captured."""
    env = {**os.environ, **HERMETIC_ENV, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline.run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="session")
def smoke_tasks(tmp_path_factory) -> Path:
    """The smoke models (hf procedure, mtl symptom es/it/ro) and their task file."""
    from tests.fixtures.models import build_smoke_models

    return build_smoke_models(tmp_path_factory.mktemp("models"), TOKENIZER)


@pytest.fixture(scope="session")
def spaccc_sample(tmp_path_factory) -> Path:
    """A folder of 12 real SPACCC cases, 3 of them the longest of the corpus."""
    d = tmp_path_factory.mktemp("spaccc")
    for f in spaccc_files(9, longest=3):
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def annotated(spaccc_sample, smoke_tasks, tmp_path_factory):
    """``python -m pipeline.run`` over ``spaccc_sample`` with the smoke models: (out, process)."""
    out = tmp_path_factory.mktemp("out")
    proc = run_pipeline("--input", str(spaccc_sample), "--output", str(out),
                        "--tasks", str(smoke_tasks), "--language", "es")
    return out, proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real Google Cloud Storage JSON API on localhost (gcp-storage-emulator), with gcsfs
    pointed at it. Yields the environment that a pipeline subprocess needs."""
    import time
    import urllib.request

    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"STORAGE_EMULATOR_HOST": host, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{host}/storage/v1/b?project=test", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the storage emulator did not start")
        os.environ.update(env)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on localhost; yields the environment that s3fs needs to reach it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()


class BeamCounters:
    """Beam counters and distributions updated inside ``with BeamCounters() as c:``, as a
    runner would collect them (``c.counters["documents/read"]``)."""

    def __enter__(self) -> "BeamCounters":
        from apache_beam.metrics.execution import MetricsContainer
        from apache_beam.runners.worker import statesampler
        from apache_beam.utils.counters import CounterFactory

        self._container = MetricsContainer("step")
        self._sampler = statesampler.StateSampler("", CounterFactory())
        statesampler.set_current_tracker(self._sampler)
        self._state = self._sampler.scoped_state("step", "process",
                                                 metrics_container=self._container)
        self._sampler.start()
        self._state.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        from apache_beam.runners.worker import statesampler

        self._state.__exit__(*exc)
        self._sampler.stop()
        statesampler.set_current_tracker(None)

    @property
    def counters(self) -> dict[str, int]:
        return {f"{k.metric.namespace}/{k.metric.name}": v
                for k, v in self._container.get_cumulative().counters.items()}
