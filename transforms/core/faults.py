"""Faults of the machine versus faults of the data.

A fault of the data (bytes that do not decode, a line that is not JSON, a damaged compressed
shard, a document the tokenizer or the model rejects) is written off for that document: a
dead letter with the reason. A fault of the machine (a CUDA/accelerator error, out of memory,
a storage or network error) is not the document's: it is raised, so the runner retries the
bundle (Dataflow) or the job stops and a rerun resumes it (DirectRunner). Classes are matched
by name so that this module needs neither torch nor the storage libraries.
"""

from __future__ import annotations

import gzip
import lzma
import zlib

# Libraries whose exceptions are faults of storage or the network.
_NETWORK_MODULES = frozenset({
    "aiohttp", "requests", "urllib3", "botocore", "boto3", "aiobotocore", "google", "gcsfs",
    "s3fs", "grpc", "httpx", "httpcore", "azure", "adlfs", "socket", "ssl",
})
# What accelerator and allocator errors say (torch before 2.8 raised them as RuntimeError).
_MACHINE_MESSAGES = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "NCCL",
                     "device-side assert", "HIP error", "XPU error")
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "Cannot allocate memory")


def _classes(e: BaseException) -> list[tuple[str, str]]:
    return [(c.__module__ or "", c.__name__) for c in type(e).__mro__]


def is_out_of_memory(e: BaseException) -> bool:
    """Host or accelerator memory ran out (``MemoryError``, ``torch.OutOfMemoryError``)."""
    if isinstance(e, MemoryError):
        return True
    if any(name == "OutOfMemoryError" for _, name in _classes(e)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MESSAGES)


def is_machine_fault(e: BaseException) -> bool:
    """Whether ``e`` is a fault of the machine, storage or network rather than of the data."""
    if is_out_of_memory(e):
        return True
    classes = _classes(e)
    if any(name == "AcceleratorError" for _, name in classes):
        return True
    if isinstance(e, RuntimeError) and any(m in str(e) for m in _MACHINE_MESSAGES):
        return True
    if isinstance(e, OSError):
        return True
    return any(module.split(".")[0] in _NETWORK_MODULES for module, _ in classes)


def is_damaged_data(e: BaseException) -> bool:
    """Whether an error while reading a shard says its bytes are damaged (a fault of the data):
    truncated or mislabelled compression, undecodable bytes, a damaged Parquet file."""
    if isinstance(e, (EOFError, UnicodeDecodeError, zlib.error, lzma.LZMAError,
                      gzip.BadGzipFile)):
        return True
    if type(e) is OSError and e.errno is None:  # pyarrow: "Couldn't deserialize thrift", ...
        return True
    if any(name in ("ZstdError", "ArrowException") for _, name in _classes(e)):
        return True
    return isinstance(e, ValueError) and not is_machine_fault(e)
