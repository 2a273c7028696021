"""The rates a model is held against, and where a converted encoder's time goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TOKENIZER
from tests.fixtures.models import build_hf, tiny_config
from transforms.inference.models import load_hf
from transforms.inference.rates import (flops_per_token, int8_matmul_rate, layer_shapes,
                                        openvino_profile, profile_part, shares)

LAYER = "__module.encoder.encoder.layer.0"


def test_flops_per_token_is_what_torch_counts_in_an_encoder_forward():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import XLMRobertaModel

    config = tiny_config(hidden=64, layers=3)
    config._attn_implementation = "eager"  # attention as two counted products, not a fused op
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(5, 1000, (2, 40))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert counter.get_total_flops() == 2 * 40 * flops_per_token(64, 3, 128, 40)


def test_the_layer_shapes_are_the_linear_layers_of_one_encoder_layer():
    from transformers import XLMRobertaModel

    layer = XLMRobertaModel(tiny_config(hidden=64), add_pooling_layer=False).encoder.layer[0]
    linears = sorted((m.in_features, m.out_features) for m in layer.modules()
                     if isinstance(m, torch.nn.Linear))
    assert sorted((k, n) for _, k, n in layer_shapes(10, 64, 128)) == linears


def test_the_int8_rate_is_measured():
    assert int8_matmul_rate(256, 64, 128, seconds=0.05) > 1e6


def test_the_profile_names_where_an_int8_encoders_time_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINICAL_NER_CACHE", str(tmp_path / "cache"))
    model = load_hf(str(build_hf(tmp_path / "hf", TOKENIZER, hidden=64)), torch.device("cpu"))
    assert model.use("openvino", "int8") == "openvino int8"
    ids = torch.from_numpy(np.random.default_rng(0).integers(5, 250000, (4, 64)))
    seconds = openvino_profile(model.encoder, ids, torch.ones_like(ids))
    assert {"linear layers", "attention", "layer norm", "quantize/dequantize",
            "vocabulary lookup (torch)"} <= set(seconds)
    assert all(t > 0 for t in seconds.values())
    parts = shares(seconds)
    assert sum(parts.values()) == pytest.approx(1, abs=0.01)
    assert list(parts.values()) == sorted(parts.values(), reverse=True)


@pytest.mark.parametrize("node_type, name, part", [  # nodes of a converted int8 XLM-R encoder
    ("FullyConnected", f"{LAYER}.attention.self.query/aten::linear/MatMul", "linear layers"),
    ("FullyConnectedQuantizedLegacy",
     f"{LAYER}.intermediate.dense/aten::linear/MatMul/DequantizationMultiply", "linear layers"),
    ("Subgraph", f"{LAYER}.attention.self/aten::scaled_dot_product_attention/"
                 "ScaledDotProductAttention/fq_output_0", "attention"),
    ("Transpose", f"{LAYER}.attention.self/aten::transpose/Transpose_3", "attention"),
    ("MatMul", f"{LAYER}.attention.self/aten::matmul/MatMul", "attention"),  # not fused
    ("Softmax", "Softmax_24934", "attention"),
    ("MVN", f"{LAYER}.output.LayerNorm/aten::layer_norm/MVN", "layer norm"),
    ("FakeQuantize", f"{LAYER}.attention.self.query/aten::linear/MatMul/fq_input_0",
     "quantize/dequantize"),
    ("Multiply", f"{LAYER}.attention.self.query/aten::linear/MatMul/DequantizationMultiply",
     "quantize/dequantize"),
    ("Add", f"{LAYER}.output/aten::add/Add", "the rest"),
])
def test_each_runtime_node_is_put_with_its_part(node_type, name, part):
    assert profile_part(node_type, name) == part
