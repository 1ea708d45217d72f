"""Turns: the runs a warm worker holds take turns, newcomers' first batch first, then epoch by epoch."""
import threading

import pytest

from tl_core.runs.turns import NEW, Turns


def script(turns: Turns, name: str, log: list, epochs: int = 2, batches: int = 2) -> None:
    """What a run's thread does with its turns, as TurnCallback drives them (no model: the order is the point)."""
    turns.take(name)
    try:
        for epoch in range(1, epochs + 1):
            if epoch > 1:
                turns.advance(name, epoch)  # before_epoch
            for _ in range(batches):
                log.append(f"{name}{epoch}")  # the batch, computed while holding the turn
                assert name in turns.holders
                turns.advance(name, epoch)  # after_batch
    finally:
        turns.leave(name)


def run_all(turns: Turns, names, **kw) -> list:
    log: list = []
    threads = [threading.Thread(target=script, args=(turns, n, log), kwargs=kw) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    return log


def test_newcomers_show_a_first_batch_then_everyone_advances_an_epoch_at_a_time():
    turns = Turns()
    for name in "abc":
        turns.join(name)
    assert turns.newcomers() == 3 and turns.held() == ["a", "b", "c"]
    log = run_all(turns, "abc")
    assert log == ["a1", "b1", "c1",  # every run's first point before anyone's second batch
                   "a1", "b1", "c1",  # everyone's epoch 1 ...
                   "a2", "a2", "b2", "b2", "c2", "c2"]  # ... before anyone's epoch 2
    assert len(turns) == 0 and not turns.holders


def test_a_short_run_is_not_held_behind_a_long_one():
    turns = Turns()
    turns.join("long")
    turns.join("short")
    log: list = []
    threads = [threading.Thread(target=script, args=(turns, "long", log), kwargs={"epochs": 4}),
               threading.Thread(target=script, args=(turns, "short", log), kwargs={"epochs": 1})]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert log.index("short1") < log.index("long2")
    assert max(i for i, x in enumerate(log) if x.startswith("short")) < log.index("long2")


def test_a_run_alone_never_waits_and_a_run_that_leaves_early_frees_the_turn():
    turns = Turns()
    turns.join("solo")
    assert run_all(turns, ["solo"], epochs=3, batches=1) == ["solo1", "solo2", "solo3"]
    turns.join("gone")
    turns.join("next")
    turns.leave("gone")  # failed before its thread took a turn
    assert run_all(turns, ["next"], epochs=1, batches=1) == ["next1"]


@pytest.mark.parametrize("stage", [NEW, 1])
def test_a_holder_keeps_the_turn_while_it_ranks_first(stage):
    turns = Turns()
    turns.join("a")
    turns.take("a")
    turns.advance("a", stage)
    assert turns.holders == {"a"}
    turns.leave("a")
    assert not turns.holders


def test_two_lanes_compute_two_runs_at_once_and_never_three():
    turns = Turns(lanes=2)
    for name in "abc":
        turns.join(name)
    assert turns.busy() == 2
    both = threading.Barrier(2, timeout=30)  # passes only if two runs hold a turn at the same time
    most: list = []

    def lane(name: str) -> None:
        turns.take(name)
        try:
            most.append(len(turns.holders))
            if name in "ab":
                both.wait()
            turns.advance(name, 1)
            most.append(len(turns.holders))
        finally:
            turns.leave(name)

    threads = [threading.Thread(target=lane, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert not both.broken and max(most) == 2 and not turns.holders and turns.busy() == 0


def test_with_two_lanes_a_newcomer_takes_the_lane_of_the_run_that_ranks_last():
    turns = Turns(lanes=2)
    for name in "ab":
        turns.join(name)
        turns.take(name)
    turns.advance("a", 1)
    turns.advance("b", 2)
    turns.join("c")  # a newcomer ranks first: b (epoch 2) must give its lane up at its next batch
    handed = threading.Thread(target=turns.advance, args=("b", 2))
    handed.start()
    turns.take("c")  # would block for ever if b kept its lane
    assert turns.holders == {"a", "c"}
    turns.leave("c")
    handed.join(30)
    assert not handed.is_alive() and turns.holders == {"a", "b"}
