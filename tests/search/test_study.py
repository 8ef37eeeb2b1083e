"""One tiny end-to-end study on SQLite, through the library."""

from __future__ import annotations

import hashlib

import optuna
from optuna.trial import TrialState

from squeeze.objectives import decode
from squeeze.search import load_spec
from squeeze.search import _api, _storage


def test_tiny_study_end_to_end(tiny_study, tmp_path) -> None:
    path = tiny_study(trials=4, references=True)
    spec = load_spec(path)
    messages: list[str] = []
    report = _api.run(spec, log=messages.append)
    assert report.budget_completed == 4
    assert any("training the teacher" in m for m in messages)

    study = optuna.load_study(study_name="tiny", storage=spec.study.storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    attrs = study.user_attrs
    assert 0.5 < attrs["teacher_accuracy"] <= 1.0 and attrs["teacher_bytes"] > 0 and attrs["teacher_latency_ms"] > 0
    # Reference (uniform) trials were enqueued and run first.
    assert sum("reference" in t.user_attrs for t in complete) >= 2

    engine = _storage.engine_for(spec.study.storage)
    for t in complete:
        acc, size, ratio = t.values
        row = _storage.get_artifact(engine, "tiny", t.number)
        assert row is not None
        # Size is the byte count of the stored artifact, and its digest is the trial's.
        assert int(size) == len(row.data)
        assert hashlib.sha256(row.data).hexdigest() == t.user_attrs["artifact_sha256"]
        loaded = decode(row.data)
        assert loaded.card["bytes"] == len(row.data)
        assert loaded.card["accuracy"] == acc
        assert ratio > 0 and t.user_attrs["latency"]["threads"] == 1

    data = _api.front(_api.resolve(str(path)))
    assert 1 <= len(data.front) <= 4
    assert _storage.snapshots(engine, "tiny"), "a Pareto snapshot is written every snapshot_every trials"

    # Resuming with a larger budget: the teacher is not trained again and old trials stay.
    messages.clear()
    spec2 = load_spec(path, trials=5)
    report = _api.run(spec2, log=messages.append)
    assert report.budget_completed == 5
    assert not any("training the teacher" in m for m in messages)
    again = optuna.load_study(study_name="tiny", storage=spec.study.storage)
    numbers = {t.number for t in again.get_trials(states=(TrialState.COMPLETE,))}
    assert {t.number for t in complete} <= numbers and len(numbers) == 5
    assert again.user_attrs["teacher_sha256"] == attrs["teacher_sha256"]


def test_size_budget_makes_the_front_feasible(tiny_study) -> None:
    path = tiny_study(name="budget", trials=4, references=True, extra="\n[objectives]\nmax_size_kb = 1.5\n")
    spec = load_spec(path)
    _api.run(spec)
    data = _api.front(_api.resolve(str(path)))
    study = optuna.load_study(study_name="budget", storage=spec.study.storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert any(t.values[1] > 1.5 * 1024 for t in complete), f"{[t.values[1] for t in complete]}: the budget should bind for this test to mean anything"
    assert all(p.size_bytes <= 1.5 * 1024 for p in data.front)
    for t in complete:
        assert t.user_attrs["feasible"] == (t.values[1] <= 1.5 * 1024)
