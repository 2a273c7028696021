"""Where the encoder runs on a CPU: torch, or OpenVINO (converted once, cached on disk).

- ``fastest_cpu_dtype`` times the model's own matrix shapes per dtype, once per machine: CPU
  flags do not tell which dtype is fast (AVX-512 BF16 without AMX runs bf16 slower than fp32).
- ``openvino_encoder`` converts a torch encoder to OpenVINO (fused attention and layer norms,
  kernels chosen for the CPU at hand; ``int8``: 8-bit weights and activations, NNCF's
  post-training quantization), caches
  the converted model under ``$CLINICAL_NER_CACHE/openvino/`` keyed by the model files' digest
  (or, for a model built in memory, its weights), and returns a callable with the torch
  encoder's signature. A conversion that fails gives None (the caller keeps torch, with one
  warning). ``openvino_compiled`` without a torch encoder runs a cached conversion, building
  no torch model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from transforms.io.shared_cache import CacheUnavailable, ensure, find
from transforms.io.storage import cache_root, write_atomically

LOG = logging.getLogger("pipeline")
RECIPE = "ptq-4"  # the conversion recipe: a new one converts again
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


SLICE = 256  # rows of a CPU's probe round: 1/SLICE of each product's


def matmul_rate(dtype: torch.dtype, shapes: Sequence[tuple[int, int, int]],
                seconds: float = 0.15, device: str = "cpu") -> float:
    """FLOP/s on matrix products of ``shapes`` (m, k, n) in ``dtype`` on ``device`` (a CPU:
    this process's threads; CUDA: timed with CUDA events), each product once per round, as
    many rounds as fill about ``seconds`` (at least one) by the time of a warm round. On a CPU
    a round is first timed on a slice of the rows, and the products are cut to as many rows as
    fit ``seconds`` in one round: a dtype the CPU only emulates (bf16 or fp16 near 1 GFLOP/s)
    would otherwise take minutes for one round of a base-size layer's."""
    dev = torch.device(device)

    def products(rows: int) -> list:
        return [(torch.randn(max(1, m // rows), k, device=dev).to(dtype),
                 torch.randn(k, n, device=dev).to(dtype)) for m, k, n in shapes]

    def timed(mats: list, rounds: int) -> float:
        if dev.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        for _ in range(rounds):
            for a, b in mats:
                torch.matmul(a, b)
        if dev.type == "cuda":
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3
        return time.perf_counter() - start

    rows, mats = 1, None
    if dev.type == "cpu":
        mats = products(SLICE)
        timed(mats, 1)  # kernels chosen
        round_s = timed(mats, 1)
        whole = round_s * SLICE  # a full round's time, estimated
        while whole > seconds and rows < SLICE:
            rows, whole = rows * 2, whole / 2
    if rows < SLICE:
        mats = products(rows)
        round_s = timed(mats, 1)  # warm-up: kernels chosen, caches and clocks
        if dev.type == "cuda":  # its first round also paid for the library's handles, kernels
            round_s = timed(mats, 1)
    rounds = max(1, round(seconds / max(round_s, 1e-9)))
    flops = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in mats)
    return flops * rounds / timed(mats, rounds)


@functools.cache
def fastest_cpu_dtype(hidden: int, intermediate: int) -> str:
    """The fastest of fp32, bf16 and fp16 for these shapes on this CPU, timed once per machine:
    the first answer is kept under ``$CLINICAL_NER_CACHE/precision/`` (a timing is noisy:
    timed again, a close call could change the dtype between runs over the same output)."""
    key = hashlib.sha256(f"{cpu_name()}|{os.cpu_count()}|{torch.__version__}|{hidden}|"
                         f"{intermediate}".encode()).hexdigest()[:20]
    kept = cache_root() / "precision" / key
    if kept.exists():
        return kept.read_text()
    rates = {name: matmul_rate(dtype, [(1024, hidden, intermediate)])
             for name, dtype in PRECISION_DTYPES.items()}
    best = max(rates, key=rates.get)
    LOG.info("precision auto: %s (matrix products, GFLOP/s: %s), kept for this machine", best,
             ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items()))
    write_atomically(str(kept), best.encode())
    return best


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else its architecture."""
    import platform

    return _cpuinfo_field("model name") or platform.machine()


def int8_float_parts() -> str:
    """The dtype an int8 encoder's float parts (attention, layer norms, GELU) run in on this
    CPU: bf16 where it has AMX's bf16 tiles, else fp32. A CPU flag, not a timing: every machine
    of one type decides alike (a Dataflow job's workers decide it each), and only AMX is sure to
    make bf16 fast (AVX-512 BF16 alone ran bf16 slower than fp32, see ``fastest_cpu_dtype``).
    On AMX, bf16 float parts ran base-size int8 windows 1.1-1.2x faster (attention 0.44 -> 0.34
    of the time) with the same spans (``python -m pipeline.bench``)."""
    return "bf16" if "amx_bf16" in (_cpuinfo_field("flags") or "").split() else "fp32"


def _cpuinfo_field(name: str) -> str | None:
    """The first value of field ``name`` in ``/proc/cpuinfo`` (None where there is none)."""
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo()
                 if line.startswith(name)), None)


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read(1 << 16).splitlines()
    except OSError:
        return []


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def conversion_key(precision: str, source: str | None = None,
                   module: torch.nn.Module | None = None) -> str:
    """The content key of a conversion: OpenVINO's and transformers' versions, the recipe, the
    precision, and the model: ``source``, the digest of the files it was loaded from, or else
    ``module``'s weights (names, shapes and about 4,096 values of each: exact bytes, the same
    whatever the thread count)."""
    from importlib.metadata import version

    import openvino

    digest = hashlib.sha1(f"{openvino.__version__}:{version('transformers')}:{RECIPE}:"
                          f"{precision}:{source}".encode())
    if source is None:
        with torch.no_grad():
            for name, p in module.state_dict().items():
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // 4096)
                digest.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
                digest.update(flat[::step].float().numpy().tobytes())
    return digest.hexdigest()[:20]


class _Encoder(torch.nn.Module):
    """The encoder's last hidden state from word embeddings and mask: the graph OpenVINO
    converts. The vocabulary lookup stays in torch (a gather), so the graph holds no
    vocabulary-sized constant, which made compiling it (and NNCF's calibration copy) slow;
    a RoBERTa-type model's positions are counted over the mask as it counts them over non-pad
    ids (from embeddings alone it would count pads too); other models number positions from 0
    whatever the ids, as they do from embeddings."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        config = encoder.config
        self.pad = (int(config.pad_token_id or 0)
                    if str(getattr(config, "model_type", "")).endswith("roberta") else None)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
                ) -> torch.Tensor:
        positions = (None if self.pad is None
                     else torch.cumsum(attention_mask, dim=1) * attention_mask + self.pad)
        return self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=positions)[0]


def _convert(encoder: torch.nn.Module, precision: str, folder: Path) -> None:
    """Convert (and for int8 compress) the encoder into ``folder`` (``encoder.xml``/``.bin``)."""
    import openvino as ov

    hidden = encoder.get_input_embeddings().embedding_dim
    example = {"inputs_embeds": torch.zeros(2, 16, hidden),
               "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    model = ov.convert_model(
        _Encoder(encoder.float().eval()), example_input=example,
        input=[("inputs_embeds", [-1, -1, hidden], ov.Type.f32),
               ("attention_mask", [-1, -1], ov.Type.i64)])
    if precision == "int8":
        model = _quantize(model, encoder.get_input_embeddings())
    ov.save_model(model, folder / "encoder.xml", compress_to_fp16=False)


def _quantize(model, embeddings: torch.nn.Embedding):
    """8-bit weights and activations (NNCF's transformer recipe: attention scores and layer
    norms stay in float), activation ranges calibrated on two seeded random windows of 128
    sub-words, reduced in numpy rather than in the graph: the statistics model then compiles
    in a fraction of the time (the ranges are the same; quantizing took 4.1 s instead of 8.8 s
    with windows of 128, 256 and 512, which moved the probe's F1 by 0.002). No SmoothQuant: its
    extra calibration pass doubled the conversion time for no change in the probe's F1."""
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)

    nncf.set_log_level(logging.WARNING)  # no progress bars or tables in the job's log
    rng = np.random.default_rng(0)
    ids = rng.integers(5, embeddings.num_embeddings, (2, 128))
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    with torch.no_grad():
        vectors = embeddings(torch.from_numpy(ids)).float().numpy()
    samples = [{"inputs_embeds": vectors, "attention_mask": np.ones_like(ids)}]
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1), inplace_statistics=False)
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples), fast_bias_correction=True,
                         advanced_parameters=advanced)


@contextlib.contextmanager
def quiet():
    """No tracer warnings, progress bars or tables from the conversion in the job's log."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def openvino_encoder(encoder: torch.nn.Module, precision: str, threads: int | None,
                     shared: str | None = None, source: str | None = None) -> Callable | None:
    """``encoder`` run by OpenVINO on the CPU in ``precision`` (fp32, bf16, fp16, int8), or
    None (with one warning) where OpenVINO is missing or the conversion fails (``source``: the
    digest of the files it was loaded from)."""
    key = conversion_key(precision, source, encoder)
    compiled = openvino_compiled(key, precision, threads, shared, encoder)
    return None if compiled is None else OpenVINOEncoder(
        compiled, encoder.get_input_embeddings().float(), conversion_folder(key))


def conversion_folder(key: str) -> Path:
    """This machine's folder of conversion ``key`` (``encoder.xml`` and its weights)."""
    return cache_root() / "openvino" / key


def openvino_compiled(key: str, precision: str, threads: int | None, shared: str | None = None,
                      encoder: torch.nn.Module | None = None):
    """The compiled OpenVINO encoder of conversion ``key``, converted from ``encoder`` unless
    cached on this machine or, with ``shared`` (``--model_cache``), made once for every machine
    (``transforms.io.shared_cache``); without ``encoder``, None where it is not cached. None
    (with one warning) where OpenVINO is missing or the conversion fails. An int8 encoder's
    float parts run in ``int8_float_parts``."""
    try:
        import openvino as ov
        from filelock import FileLock

        path = conversion_folder(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()

        def convert(folder: Path) -> None:
            with quiet():
                _convert(encoder, precision, folder)

        shared = shared and f"{shared.rstrip('/')}/openvino/{key}"
        with FileLock(str(path) + ".lock"):  # this machine's processes
            how = find(path, shared) if encoder is None else ensure(path, convert, shared)
        if how is None:
            return None
        core = ov.Core()
        floats = int8_float_parts() if precision == "int8" else precision
        config = {"INFERENCE_PRECISION_HINT": _HINTS[floats],
                  "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(path / "compiled")}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(core.read_model(path / "encoder.xml"), "CPU", config)
    except CacheUnavailable:
        raise  # a fault of the storage: retried, never a silent switch of backend
    except Exception as e:  # noqa: BLE001 - any conversion failure falls back to torch
        LOG.warning("openvino: could not convert the encoder (%s: %s); running it with torch",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    LOG.info("openvino: encoder %s in %s (%s, %.1f s)", how, precision if floats == precision
             else f"{precision}, float parts in {floats}", path.name, time.perf_counter() - started)
    return compiled


class OpenVINOEncoder:
    """A compiled OpenVINO encoder called like the torch one: ``(input_ids=, attention_mask=)``
    to a one-tuple of the last hidden state (fp32, on the CPU); the vocabulary lookup runs in
    torch (``embeddings``). ``xml``: the conversion it was compiled from."""

    def __init__(self, compiled, embeddings: torch.nn.Embedding, folder: Path) -> None:
        self.compiled = compiled
        self.embeddings = embeddings
        self.xml = folder / "encoder.xml"
        self.output = compiled.output(0)

    @property
    def float_parts(self) -> str:
        """The dtype it runs its float parts in, as compiled (fp32, bf16, fp16)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return next((name for name, h in _HINTS.items() if h == hint), hint)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                 ) -> tuple[torch.Tensor]:
        request = self.compiled.create_infer_request()
        with torch.no_grad():
            vectors = self.embeddings(input_ids)
        result = request.infer({"inputs_embeds": vectors.numpy(),
                                "attention_mask": np.ascontiguousarray(attention_mask.numpy())})
        return (torch.from_numpy(np.asarray(result[self.output])),)
