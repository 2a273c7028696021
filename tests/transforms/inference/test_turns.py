"""A machine's GPU is taken in turns: one process's call at a time."""

import threading
from contextlib import contextmanager

import pytest

from tests.transforms.test_handlers import Model, doc_work, run
from transforms.inference import turns
from transforms.inference.turns import gpu_turn


def test_a_second_holder_waits_for_the_first_to_leave(tmp_path):
    path, order = str(tmp_path / "gpu0.lock"), []
    inside, leave = threading.Event(), threading.Event()

    def first():
        with gpu_turn(path):
            order.append("first in")
            inside.set()
            leave.wait(10)
            order.append("first out")

    def second():
        with gpu_turn(path):
            order.append("second in")

    a = threading.Thread(target=first)
    a.start()
    inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert order == ["first in"]  # the second is still waiting
    leave.set()
    a.join(10)
    b.join(10)
    assert order == ["first in", "first out", "second in"]


def test_a_failure_inside_gives_the_turn_back(tmp_path):
    path = str(tmp_path / "gpu0.lock")
    with pytest.raises(RuntimeError):
        with gpu_turn(path):
            raise RuntimeError("CUDA error: an illegal memory access")
    done = threading.Event()

    def other():
        with gpu_turn(path):
            done.set()

    threading.Thread(target=other, daemon=True).start()
    assert done.wait(10)


def test_without_a_lock_file_the_block_still_runs(tmp_path):
    ran = []
    with gpu_turn(str(tmp_path / "missing" / "gpu0.lock")):
        ran.append(1)
    assert ran == [1]


def test_one_lock_file_per_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,GPU-3c4d")
    first = turns.turn_file()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert first.endswith("clinical-ner-gpu-GPU-1a2b.lock") and turns.turn_file() != first


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_on_a_gpu_each_model_call_holds_the_turn_and_only_it(monkeypatch, device):
    """The group's call, then the retries of its failed batch: each in a turn, the settling
    of results (and the freeing of memory before a retry) outside."""
    import transforms.handlers

    held, log = [], []

    @contextmanager
    def recorded(path=None):
        held.append(True)
        yield
        held.pop()

    class Checked(Model):
        def predict_many(self, batches, pad_to=None):
            log.append(bool(held))
            return super().predict_many(batches, pad_to)

        def release_memory(self):
            log.append(("released", bool(held)))

    monkeypatch.setattr(transforms.handlers, "gpu_turn", recorded)
    run((doc_work("a", [10]), doc_work("b", [10])), Checked(oom_above=1), device=device,
        batch_tokens=1000)
    gpu = device == "cuda"
    assert log == [gpu, ("released", False), gpu, gpu] and not held  # the 2, then halves


def test_a_call_that_fails_as_a_whole_is_sorted_as_its_batches_failures():
    class Unpicklable(Model):
        def predict_many(self, batches, pad_to=None):
            if len(batches[0][0]) > 1:  # what a proxy raises for a result it cannot unpickle
                raise TypeError("__init__() missing 1 required positional argument")
            return super().predict_many(batches, pad_to)

    model = Unpicklable()
    out = run((doc_work("a", [10]), doc_work("b", [10, 12])), model, batch_tokens=1000)
    # the group's call failed: its batch again window by window, as a batch that failed
    assert all("t" in w.predictions for w in out) and model.calls == [(1, 10)] * 2 + [(1, 12)]
