"""The batched storage writes what Optuna's own RDB storage writes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from squeeze.search._batched import BatchedStorage

DIRECTIONS = ["maximize", "minimize", "minimize"]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'batched.db'}"
    return request.getfixturevalue("pg_url")


def _trials(storage, name: str, *, fail: int, url: str) -> list[optuna.trial.FrozenTrial]:
    """Six trials through ask/tell: parameters of three kinds, attributes, one FAIL, one from the queue."""
    study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"sparsity.a": 0.5, "bits.a": 4, "student.w": 2}, user_attrs={"reference": "uniform"})
    for number in range(6):
        trial = study.ask()
        s = trial.suggest_float("sparsity.a", 0.0, 0.9, step=0.1)
        b = trial.suggest_categorical("bits.a", [2, 4, 8, 32])
        w = trial.suggest_int("student.w", 1, 4)
        trial.set_user_attr("plan", {"sparsity": s, "bits": b, "nested": [1, 2.5, None]})
        trial.set_user_attr("plan", {"sparsity": s, "bits": b, "overwritten": True})
        trial.storage.set_trial_system_attr(trial._trial_id, "note", f"trial {number}")
        if number == fail:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [1 - s, float(b * w), s + w])
    # Read back by a fresh, plain storage: what another worker (or optuna-dashboard) would see.
    return optuna.load_study(study_name=name, storage=RDBStorage(url)).get_trials()


def _comparable(t: optuna.trial.FrozenTrial) -> tuple:
    return (t.number, t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs)


def test_batched_writes_read_back_as_optunas_own(url: str) -> None:
    plain = RDBStorage(url)
    batched = BatchedStorage(RDBStorage(url))
    ours = _trials(batched, f"batched-{uuid.uuid4().hex[:6]}", fail=3, url=url)
    theirs = _trials(plain, f"plain-{uuid.uuid4().hex[:6]}", fail=3, url=url)
    assert [_comparable(t) for t in ours] == [_comparable(t) for t in theirs]
    assert ours[0].user_attrs["reference"] == "uniform" and ours[0].params["bits.a"] == 4
    assert ours[3].state == TrialState.FAIL and ours[3].params, "a failed trial keeps its parameters"


def test_a_flush_makes_a_running_trials_parameters_visible_to_other_workers(url: str) -> None:
    name = f"flush-{uuid.uuid4().hex[:6]}"
    batched = BatchedStorage(RDBStorage(url))
    study = optuna.create_study(study_name=name, storage=batched, directions=DIRECTIONS)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)  # the first of a name is written through at once (distribution check)
    trial.suggest_float("y", 0.0, 1.0)
    trial.set_user_attr("k", 1)
    other = RDBStorage(url)

    def seen() -> optuna.trial.FrozenTrial:
        return optuna.load_study(study_name=name, storage=other).get_trials(deepcopy=False)[0]

    batched.flush(trial._trial_id)
    running = seen()
    assert running.state == TrialState.RUNNING
    assert set(running.params) == {"x", "y"} and running.user_attrs == {"k": 1}
