"""The benchmarks' shared path (``bench.backends``) runs what it is asked to."""

import pytest

from bench.backends import documents, pipeline_path
from transforms.handlers import InferenceConfig


def test_inference_config_is_keyword_only():
    with pytest.raises(TypeError):
        InferenceConfig("fp32", 1024)  # a positional budget once landed in ``backend``


@pytest.mark.parametrize("budget", [1024, 2048])
def test_the_bench_batches_by_the_budget_asked_for(budget):
    out = pipeline_path(documents(40), "fp32", budget, 512, size="tiny")
    assert budget / 2 < out["largest_batch_tokens"] <= budget
    assert out["real_tokens"] > 4 * budget and sum(map(len, out["spans"].values())) > 0
