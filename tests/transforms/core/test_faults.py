"""Which errors are the machine's (raised for a retry) and which the data's (dead-lettered)."""

import gzip
import json
import zlib

import pytest
import torch

from transforms.core.faults import is_damaged_data, is_machine_fault, is_out_of_memory


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: device-side assert triggered"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
    MemoryError(),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("read timed out"),
    BrokenPipeError(),
    OSError(5, "Input/output error"),
])
def test_faults_of_the_machine(error):
    assert is_machine_fault(error)
    assert not is_damaged_data(error)


@pytest.mark.parametrize("error", [
    IndexError("index out of range in self"),
    ValueError("Input is not valid"),
    RuntimeError("The size of tensor a (600) must match the size of tensor b (514)"),
    KeyError("x"),
])
def test_faults_of_the_data_for_a_model(error):
    assert not is_machine_fault(error)


def test_oom():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(torch.AcceleratorError("CUDA error: misaligned address"))


def damaged():
    errors = []
    for bad, read in ((b"not gzip", gzip.decompress), (gzip.compress(b"x" * 100)[:20],
                                                       gzip.decompress),
                      (b"\xff\xfe", lambda b: b.decode("utf-8")), (b"{x", json.loads),
                      (b"xx", zlib.decompress)):
        try:
            read(bad)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    return errors


@pytest.mark.parametrize("error", damaged(), ids=lambda e: type(e).__name__)
def test_damaged_bytes_are_the_data(error):
    assert is_damaged_data(error)


def test_damaged_parquet_is_the_data_but_a_network_error_is_not():
    assert is_damaged_data(OSError("Couldn't deserialize thrift: No more data to read."))
    assert not is_damaged_data(ConnectionResetError(104, "reset"))
    assert not is_damaged_data(FileNotFoundError(2, "gone"))
