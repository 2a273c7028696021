"""How a local GPU job sizes its worker processes (each holds its own copy of the models)."""

import os
import stat

from pipeline.run import gpu_processes
from transforms.core.spec import TaskSpec


def spec(model) -> TaskSpec:
    return TaskSpec(name="t", kind="hf", model=str(model), tokenizer="tok", languages=("es",))


def fake_nvidia_smi(folder, mib: int) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho {mib}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_two_processes_a_core_at_most_one_a_read_without_a_gpu_to_ask(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert gpu_processes({"t": spec(tmp_path)}, cores=8, reads=100) == 16
    assert gpu_processes({"t": spec(tmp_path)}, cores=8, reads=5) == 5


def test_no_more_copies_than_the_gpus_memory_holds(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(2048 << 20)  # 2 GiB of fp32 weights: 1 GiB a copy in bf16
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_nvidia_smi(bin_dir, 24 * 1024)  # an L4
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # each process: 1 GiB of context and activations + 1 GiB per task; 0.9 of 24 GiB
    assert gpu_processes({"a": spec(model)}, cores=8, reads=100) == 10
    assert gpu_processes({"a": spec(model), "b": spec(model)}, cores=8, reads=100) == 7
    fake_nvidia_smi(bin_dir, 80 * 1024)  # an H100: 16 fit
    assert gpu_processes({"a": spec(model)}, cores=8, reads=100) == 16
    fake_nvidia_smi(bin_dir, 4 * 1024)
    assert gpu_processes({"a": spec(model)}, cores=8, reads=100, shared=True) == 16  # one copy


def test_the_weights_counted_once_whatever_else_the_folder_holds(tmp_path):
    from pipeline.run import _weights_mib

    for name, mib in (("model.safetensors", 40), ("pytorch_model.bin", 30),
                      ("openvino_model.bin", 20)):
        with open(tmp_path / name, "wb") as f:
            f.truncate(mib << 20)
    assert _weights_mib(str(tmp_path)) == 40  # the safetensors copy only
    (tmp_path / "model.safetensors").unlink()
    assert _weights_mib(str(tmp_path)) == 30  # the torch file, not the conversion
    assert _weights_mib("xlm-roberta-base") == 1100  # on the hub: its fp32 size
