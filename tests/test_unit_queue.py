"""The engine's job queue (perturbcast.engine_run.UnitQueue): a fold's score units go to the worker whose
session holds what the fold's metrics memoised, without leaving a worker idle while work waits."""
from types import SimpleNamespace

from perturbcast import layout
from perturbcast.engine_run import UnitQueue


def score_unit(fold: int, method: str) -> list:
    steps = [SimpleNamespace(stage=layout.SCORE, depends=[f"predict/{fold}/{method}"],
                             inputs={"input_solution": f"fold_{fold}/solution.h5ad"}, id=f"score/{fold}/{method}/{m}")
             for m in ("a", "b")]
    return [(step, "key") for step in steps]


def other_unit(name: str) -> list:
    return [(SimpleNamespace(stage="split", depends=[], inputs={}, id=name), "key")]


def names(unit) -> str:
    return unit[0][0].id.rsplit("/", 1)[0] if unit[0][0].stage == layout.SCORE else unit[0][0].id


def test_a_worker_takes_its_own_sessions_units_first_and_leaves_the_others_held_sessions():
    queue = UnitQueue()
    queue.put(score_unit(0, "ground_truth"))
    assert names(queue.get("A")) == "score/0/ground_truth"  # A now holds fold 0's session
    for unit in (score_unit(0, "no_change"), other_unit("split/3"), score_unit(1, "train_mean"),
                 score_unit(0, "train_mean")):
        queue.put(unit)
    assert names(queue.get("B")) == "split/3"          # not fold 0's units: A holds that session
    assert names(queue.get("A")) == "score/0/no_change"
    assert names(queue.get("B")) == "score/1/train_mean"  # B opens fold 1's session
    queue.put(score_unit(1, "no_change"))
    assert names(queue.get("B")) == "score/1/no_change"  # its own session first, though fold 0's came earlier
    assert names(queue.get("A")) == "score/0/train_mean"


def test_an_idle_worker_takes_a_held_sessions_unit_when_nothing_else_waits_and_the_end_comes_last():
    queue = UnitQueue()
    queue.put(score_unit(0, "ground_truth"))
    queue.get("A")
    queue.put(score_unit(0, "no_change"))
    assert names(queue.get("B")) == "score/0/no_change"
    queue.put(None)
    queue.put(other_unit("late"))
    assert queue.get("A") is None  # what was put before the end runs first; nothing after it is preferred
