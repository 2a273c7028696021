"""Inference over groups of documents: batches, heads, and faults of the data vs the machine,
with stand-in models that raise torch's real exception types."""

import numpy as np
import pytest
import torch

from tests.conftest import BeamCounters
from transforms.handlers import InferenceConfig, ModelFault, TaskInference
from transforms.core.predictor import Predictor
from transforms.core.records import Document, Failure, Work
from transforms.segment import pack
from transforms.core.spec import CPU_BATCH, GPU_BATCH, TaskSpec

SPEC = TaskSpec(name="t", kind="mtl", model="m.pt", languages=("es", "it"), tokenizer="tok",
                heads={"es": ("t_es",), "it": ("t_it", "u_it")},
                labels={"t_es": ("B-T", "I-T", "O"), "t_it": ("B-T", "I-T", "O"),
                        "u_it": ("B-U", "I-U", "O")}, tokenizer_key="tok")
POISON = 666


def doc_work(key: str, lengths, lang="es", poison_window=None, tasks=("t",)) -> Work:
    """A document with windows of the given lengths; each window predicts its inner tokens."""
    pieces, start = [], 0
    for k, n in enumerate(lengths):
        ids = np.full(n, 10, np.int32)
        ids[0], ids[-1] = 0, 2
        if k == poison_window:
            ids[1] = POISON
        pos = np.arange(1, n - 1, dtype=np.int32)
        starts = np.arange(start, start + len(pos), dtype=np.int64) * 2
        pieces.append((ids, pos, starts, starts + 1))
        start += len(pos)
    return Work(Document(key, key, "x" * 1000, "src", lang=lang, tasks=tasks),
                {"tok": pack(pieces)})


class Model(Predictor):
    """Label = the head's index where the sub-word is 10; logs each batch's shape."""

    def __init__(self, raise_on=None, oom_above=None):
        self.calls, self.raise_on, self.oom_above = [], raise_on, oom_above
        self.released = 0

    def predict(self, windows, positions, heads, pad_to=None):
        self.calls.append((len(windows), max(len(w) for w in windows)))
        if self.oom_above is not None and len(windows) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any((w == POISON).any() for w in windows):
            raise self.raise_on or IndexError("index out of range in self")
        n = sum(len(p) for p in positions)
        labels = np.tile(np.arange(len(heads), dtype=np.int16), (n, 1))
        return labels, np.full((n, len(heads)), 0.5, np.float32)

    def release_memory(self):
        self.released += 1


def run(group, model, **config):
    return TaskInference(SPEC, InferenceConfig(**{"batch_tokens": 64, **config}))(group, model)


def test_predictions_stay_with_their_document_and_each_head_with_its_column():
    group = (doc_work("a", [10, 6]), doc_work("b", [8], lang="it"),
             Work(Document("c", "c", "y", "src", status="skipped")))
    out = run(group, Model())
    assert [w.doc.key for w in out] == ["a", "b", "c"]
    pa, pb = out[0].predictions["t"], out[1].predictions["t"]
    assert pa.heads == ("t_es",) and pa.label_ids.shape == (8 + 4, 1)
    assert pb.heads == ("t_it", "u_it") and pb.label_ids.shape == (6, 2)
    # the batch asked for heads (t_es, t_it, u_it) or a subset: each document gets its own
    # heads' columns back, in its own order
    assert set(pb.label_ids[:, 1].tolist()) != set(pb.label_ids[:, 0].tolist())
    assert out[2] is group[2] and not out[2].predictions


def test_windows_are_sorted_and_cut_by_the_token_budget():
    model = Model()
    run((doc_work("a", [30, 10, 10]), doc_work("b", [10, 20])), model)
    # sorted 10, 10, 10, 20, 30, each padded to 32 in its batch: two fit in 64 tokens
    assert model.calls == [(2, 10), (2, 20), (1, 30)]
    model = Model()
    run((doc_work("a", [30, 10, 10]), doc_work("b", [10, 40])), model, batch_tokens=130)
    # 10, 10, 10, 30 (4 x 32 = 128 tokens), then 40 alone (padded to 64)
    assert model.calls == [(4, 30), (1, 40)]


def test_a_groups_batches_reach_the_model_in_one_call():
    class Counting(Model):
        def __init__(self):
            super().__init__()
            self.many = []

        def predict_many(self, batches, pad_to=None):
            self.many.append(len(batches))
            return super().predict_many(batches, pad_to)

    model = Counting()
    run((doc_work("a", [30, 10, 10]), doc_work("b", [10, 20], poison_window=1)), model)
    # three batches in one call; the poisoned one (20 with 10) again window by window
    assert model.many == [3, 1, 1] and model.calls == [(2, 10), (2, 20), (1, 30), (1, 10),
                                                        (1, 20)]


def test_on_a_cpu_a_longer_window_starts_a_batch_where_it_would_pad_the_others():
    group = (doc_work("a", [10, 12, 14]), doc_work("b", [40]))
    cpu = Model()
    run(group, cpu, batch_tokens=4096)
    assert cpu.calls == [(3, 14), (1, 40)]  # 40 pads to 64: 3 x 32 more sub-words than 64
    gpu = Model()
    run(group, gpu, batch_tokens=4096, batch_mix=GPU_BATCH.mix)  # a GPU fills to the budget
    assert gpu.calls == [(4, 40)]


class Logged(Model):
    """``Model`` whose batch log is read through a method (a proxy has no attributes)."""

    def logged(self):
        return self.calls


def test_through_beams_large_model_proxy_a_gpu_job_batches_as_in_process():
    """With ``large_model`` (the GPU default) every worker reaches the model through Beam's
    proxy, which has the model's methods only: the batching rule comes from the job's
    configuration, so the batches are the ones the model gets in process."""
    from uuid import uuid4

    from apache_beam.utils.multi_process_shared import MultiProcessShared

    group = (doc_work("a", [10, 12, 14]), doc_work("b", [40]), doc_work("c", [20, 9], "it"))
    config = {"batch_tokens": 4096, "batch_mix": GPU_BATCH.mix}
    here = Logged()
    expected = run(group, here, **config)
    proxy = MultiProcessShared(Logged, tag=f"handlers-{uuid4()}", always_proxy=True).acquire()
    assert not hasattr(proxy, "calls")  # what made GPU jobs batch by the CPU's rule
    got = run(group, proxy, **config)
    assert proxy.logged() == here.calls == [(6, 40)]
    for a, b in zip(got, expected):
        for name, p in a.predictions.items():
            assert (p.label_ids == b.predictions[name].label_ids).all()


def test_the_batching_rule_follows_the_jobs_device():
    from pipeline.options import AnnotateOptions, inference_config

    def options(*args):
        opts = AnnotateOptions(["--input", "i", "--output", "o", "--tasks", "t", *args])
        return opts

    gpu = options()
    gpu.apply_device_defaults(True)  # a local run that found CUDA, or an accelerator
    assert gpu.device == "cuda" and inference_config(gpu).batch_mix == GPU_BATCH.mix
    cpu = options()
    cpu.apply_device_defaults(False)
    assert cpu.device == "auto" and inference_config(cpu).batch_mix == CPU_BATCH.mix
    assert inference_config(cpu, require_cuda=True).batch_mix == GPU_BATCH.mix
    kept = options("--device", "cpu")  # the models kept on the CPU of a GPU machine
    kept.apply_device_defaults(False)
    assert inference_config(kept).batch_mix == CPU_BATCH.mix


def test_a_window_the_model_rejects_fails_only_its_document():
    group = (doc_work("a", [10]), doc_work("b", [10, 10], poison_window=1), doc_work("c", [10]))
    model = Model()
    out = run(group, model, batch_tokens=1000)
    assert [len(w.failures) for w in out] == [0, 1, 0]
    assert out[1].failures[0] == Failure("b", "t", "inference", "IndexError")
    assert "t" in out[0].predictions and "t" in out[2].predictions
    assert "t" not in out[1].predictions
    assert model.calls[0] == (4, 10) and len(model.calls) == 1 + 4  # then window by window


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: device-side assert triggered"),
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    ConnectionResetError(104, "the model process went away"),
])
def test_faults_of_the_machine_are_raised_at_once(error):
    model = Model(raise_on=error)
    group = tuple(doc_work(k, [10], poison_window=0) for k in "abcd")
    with pytest.raises(type(error)):
        run(group, model, batch_tokens=1000)
    assert len(model.calls) == 1  # not retried window by window


def test_out_of_memory_retries_the_batch_in_halves():
    model = Model(oom_above=2)
    group = tuple(doc_work(k, [10]) for k in "abcdefgh")
    out = run(group, model, batch_tokens=1000)
    assert all("t" in w.predictions for w in out)
    assert [n for n, _ in model.calls] == [8, 4, 2, 2, 4, 2, 2]
    assert model.released == 3


def test_a_batch_that_ran_out_of_memory_holds_none_of_it_while_its_halves_run():
    import weakref

    class Activations:
        """Stands for the tensors a batch had allocated when it ran out of memory."""

    class Holding(Model):
        def __init__(self):
            super().__init__(oom_above=1)
            self.failed_batches, self.alive_at_retry = [], []

        def predict(self, windows, positions, heads, pad_to=None):
            self.alive_at_retry.append(sum(r() is not None for r in self.failed_batches))
            activations = Activations()  # noqa: F841 - held by this frame, as torch's are
            self.failed_batches.append(weakref.ref(activations))
            return super().predict(windows, positions, heads, pad_to)

    model = Holding()
    run(tuple(doc_work(k, [10]) for k in "abcd"), model, batch_tokens=1000)
    assert [n for n, _ in model.calls] == [4, 2, 1, 1, 2, 1, 1]
    assert model.alive_at_retry == [0] * 7  # no failed batch's frame is kept by its error


def test_out_of_memory_on_one_window_is_raised():
    model = Model(oom_above=0)
    with pytest.raises(torch.OutOfMemoryError):
        run((doc_work("a", [10]),), model)


def test_a_model_that_fails_on_every_window_of_several_documents_is_raised():
    class Broken(Model):
        def predict(self, windows, positions, heads, pad_to=None):
            self.calls.append(len(windows))
            raise AttributeError("'AutoProxy' object has no attribute 'pad_id'")

    model = Broken()
    with pytest.raises(ModelFault) as info:
        run((doc_work("a", [10]), doc_work("b", [10])), model, batch_tokens=1000)
    assert isinstance(info.value.__cause__, AttributeError)
    assert model.calls == [2, 1, 1]


def test_token_counters_count_each_window_once():
    group = (doc_work("a", [10, 10], poison_window=1), doc_work("b", [6]), doc_work("c", [8]))
    with BeamCounters() as metrics:
        run(group, Model(), batch_tokens=1000)
    # the batch of 4 failed, then each window alone: a's first (10), b (6) and c (8) ran,
    # each padded to 32
    assert metrics.counters == {"tokens/real_t": 24, "tokens/padding_t": 3 * 32 - 24,
                                "windows/failed_t": 1}
    with BeamCounters() as metrics:
        run((doc_work("d", [10, 6]),), Model(), batch_tokens=1000)
    assert metrics.counters == {"tokens/real_t": 16, "tokens/padding_t": 2 * 32 - 16}


def test_num_inferences_counts_the_documents_the_model_ran():
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.handlers import InferTask, TokenClassifierHandler

    class Handler(TokenClassifierHandler):
        def load_model(self):
            return Model()

    failed = doc_work("failed", [6]).with_(failures=(Failure("failed", "t", "segment", "x"),))
    group = (doc_work("a", [6, 5]), doc_work("b", [4]), doc_work("other", [6], tasks=("u",)),
             failed)
    p = beam.Pipeline(runner=FnApiRunner())
    p | beam.Create([group]) | InferTask(Handler(SPEC, InferenceConfig()))
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query()["counters"]}
    assert counters["num_inferences"] == 2  # not the other task's, not the failed one
    byte_sizes = result.metrics().query()["distributions"]
    sizes = [r.committed for r in byte_sizes if r.key.metric.name.endswith("byte_size")
             and "request" in r.key.metric.name]
    assert sizes and sizes[0].sum == (6 + 5 + 4) * 4  # int32 ids of its two documents' windows


def test_a_model_class_defines_one_of_the_two_calls():
    with pytest.raises(TypeError, match="predict or predict_many"):
        type("Neither", (Predictor,), {})
