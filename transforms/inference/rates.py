"""What a machine's matrix products run at, and where a converted encoder's time goes.

- ``layer_shapes`` and ``flops_per_token``: one encoder layer's matrix products, and the
  forward FLOPs per token of a BERT-style encoder.
- ``int8_matmul_rate``: one encoder layer's products in int8 as this CPU runs them through
  OpenVINO (weights and activations quantized by NNCF, as the int8 path quantizes the encoder):
  the int8 path's ceiling, beside ``backends.matmul_rate`` for fp32, bf16 and fp16.
- ``openvino_profile``: OpenVINO's per-layer counters for one batch through a converted encoder,
  grouped (linear layers, attention, layer norm, quantize/dequantize, the rest) with the
  vocabulary lookup that runs in torch; ``shares`` of the whole.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transforms.inference.backends import OpenVINOEncoder, quiet


def layer_shapes(tokens: int, hidden: int = 768, intermediate: int = 3072
                 ) -> list[tuple[int, int, int]]:
    """The matrix products (m, k, n) of one encoder layer's linear layers over ``tokens``."""
    return [(tokens, hidden, hidden)] * 4 + [(tokens, hidden, intermediate),
                                             (tokens, intermediate, hidden)]


def flops_per_token(hidden: int, layers: int, intermediate: int, length: int) -> float:
    """Forward FLOPs per token of a BERT-style encoder at sequence length ``length``: the
    linear layers' products and attention's two (scores and the weighted sum)."""
    return layers * (2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * length * hidden)


def int8_matmul_rate(tokens: int = 8192, hidden: int = 768, intermediate: int = 3072,
                     seconds: float = 1.0, threads: int | None = None) -> float:
    """Operations per second of one encoder layer's matrix products (``layer_shapes``) in int8
    on this CPU: the six products as a chain of linear layers, converted to OpenVINO and
    quantized by NNCF, run for about ``seconds`` after a warm call."""
    import nncf
    import openvino as ov

    sizes = [hidden] * 5 + [intermediate, hidden]
    chain = torch.nn.Sequential(*(torch.nn.Linear(a, b, bias=False)
                                  for a, b in zip(sizes, sizes[1:]))).eval()
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((tokens, hidden), dtype=np.float32) for _ in range(2)]
    with quiet():
        model = ov.convert_model(chain, example_input=torch.zeros(tokens, hidden))
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=2)
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    request.infer({0: samples[0]})  # kernels chosen
    ops = 2 * sum(m * k * n for m, k, n in layer_shapes(tokens, hidden, intermediate))
    rounds, start = 0, time.perf_counter()
    while rounds == 0 or time.perf_counter() - start < seconds:
        request.infer({0: samples[0]})
        rounds += 1
    return ops * rounds / (time.perf_counter() - start)


def profile_part(node_type: str, name: str) -> str:
    """The part of an encoder an OpenVINO runtime node belongs to, by its type and name (the
    linear layers' names hold their module's, e.g. ``attention.self.query``)."""
    if node_type in ("Softmax", "ScaledDotProductAttention") or (
            node_type in ("Subgraph", "MatMul", "Transpose") and "attention.self" in name):
        return "attention"
    if node_type.startswith("FullyConnected") or node_type in ("MatMul", "Convolution"):
        return "linear layers"
    if node_type == "MVN":
        return "layer norm"
    if node_type in ("FakeQuantize", "Convert") or "Dequantization" in name:
        return "quantize/dequantize"
    return "the rest"


def openvino_profile(encoder: OpenVINOEncoder, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> dict[str, float]:
    """Where one batch's time goes in ``encoder`` (its conversion compiled again with OpenVINO's
    per-layer counters): seconds in each part (``profile_part``) and in the vocabulary lookup
    in torch."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(encoder.xml), "CPU", {
        "PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY",
        **{name: encoder.compiled.get_property(name)  # as the encoder runs
           for name in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")}})
    request = compiled.create_infer_request()
    start = time.perf_counter()
    with torch.no_grad():
        vectors = encoder.embeddings(input_ids).numpy()
    times = {"vocabulary lookup (torch)": time.perf_counter() - start}
    inputs = {"inputs_embeds": vectors, "attention_mask": attention_mask.numpy()}
    request.infer(inputs)  # kernels chosen: the counters are the next call's
    request.infer(inputs)
    for info in request.get_profiling_info():
        part = profile_part(info.node_type, info.node_name)
        times[part] = times.get(part, 0.0) + info.real_time.total_seconds()
    return times


def shares(seconds: dict[str, float]) -> dict[str, float]:
    """Each part's share of the whole, largest first."""
    total = sum(seconds.values())
    return {part: round(t / total, 3) for part, t in sorted(seconds.items(), key=lambda kv: -kv[1])}
