"""A machine's GPU is taken in turns: one group of one process at a time, all its tasks."""

import threading

import pytest

from tests.transforms.test_handlers import Model, doc_work, run
from transforms.inference import turns
from transforms.inference.turns import give_turn, take_turn


def held() -> bool:
    return getattr(turns._held, "lock", None) is not None


def test_a_second_holder_waits_for_the_first_to_give_the_turn_back(tmp_path):
    path, order = str(tmp_path / "gpu0.lock"), []
    inside, leave = threading.Event(), threading.Event()

    def first():
        take_turn(path)
        take_turn(path)  # held already: kept, not waited for again
        order.append("first in")
        inside.set()
        leave.wait(10)
        order.append("first out")
        give_turn()

    def second():
        take_turn(path)
        order.append("second in")
        give_turn()

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


def test_without_a_lock_file_the_work_goes_on(tmp_path):
    take_turn(str(tmp_path / "missing" / "gpu0.lock"))
    assert not held()
    give_turn()  # nothing held: nothing to give


@pytest.fixture
def lock_here(monkeypatch, tmp_path):
    monkeypatch.setattr(turns, "turn_file", lambda device=0: str(tmp_path / "gpu0.lock"))
    yield
    give_turn()


class Checked(Model):
    """Records whether the turn was held at each call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.in_turn = []

    def predict_many(self, batches, pad_to=None):
        self.in_turn.append(held())
        return super().predict_many(batches, pad_to)


@pytest.mark.parametrize("device,keeps,after", [("cuda", True, True), ("cuda", False, False),
                                                ("cpu", False, False)])
def test_a_gpu_group_holds_the_turn_from_its_first_task_to_its_last(lock_here, device, keeps,
                                                                     after):
    model = Checked()
    run((doc_work("a", [10]),), model, device=device, keeps_turn=keeps)
    assert model.in_turn == [device == "cuda"] and held() == after


def test_the_last_task_gives_the_turn_back_before_settling_and_takes_it_for_retries(lock_here):
    class Settling(Checked):
        def release_memory(self):
            super().release_memory()
            self.in_turn.append(("released", held()))

    model = Settling(oom_above=1)
    run((doc_work("a", [10]), doc_work("b", [10])), model, device="cuda", batch_tokens=1000)
    # the batch of 2 ran out of memory: retried in halves, each call in a turn, none between
    assert model.in_turn == [True, ("released", False), True, True] and not held()


def test_a_last_task_without_documents_still_gives_the_turn_back(lock_here):
    take_turn()  # held from the group's earlier task
    model = Checked()
    run((doc_work("a", [10], tasks=("other",)),), model, device="cuda")
    assert model.in_turn == [] and not held()


def test_a_failing_task_gives_the_turn_back(lock_here):
    with pytest.raises(Exception):
        run((doc_work("a", [10]),), Model(oom_above=0), device="cuda", keeps_turn=True)
    assert not held()
