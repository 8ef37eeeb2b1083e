"""One tiny end-to-end study on SQLite, through the library."""

from __future__ import annotations

import hashlib

import optuna
import pytest
import torch
from optuna.trial import TrialState

from squeeze.objectives import decode
from squeeze.search import load_spec
import squeeze.search as ss
from squeeze.search import _context, _teacher
from squeeze.search import _storage, _teacher_store


def test_tiny_study_end_to_end(tiny_study, tmp_path) -> None:
    path = tiny_study(trials=4, references=True)
    spec = load_spec(path)
    messages: list[str] = []
    report = ss.run(spec, log=messages.append)
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
    # A network is timed once a study: each 4-bit reference runs its 8-bit twin's int8 network and
    # takes that measurement, so the two cannot read as faster or slower than each other.
    refs = {t.user_attrs["reference"]: t for t in complete if "reference" in t.user_attrs}
    twins = [(refs[f"uniform 8-bit, sparsity {s}"], refs[f"uniform 4-bit, sparsity {s}"]) for s in ("0", "0.5")
             if f"uniform 8-bit, sparsity {s}" in refs and f"uniform 4-bit, sparsity {s}" in refs]
    assert twins
    for eight, four in twins:
        assert not eight.user_attrs["latency_reused"] and "latency_from_trial" not in eight.user_attrs
        assert four.user_attrs["latency_reused"] and four.user_attrs["latency_from_trial"] == eight.number
        assert four.user_attrs["latency_key"] == eight.user_attrs["latency_key"]
        assert four.values[2] == eight.values[2] and four.values[1] < eight.values[1]
    assert len({t.user_attrs["latency_key"] for t, _ in twins}) == len(twins)
    shown = ss.status(str(path))
    reused = sum(1 for t in complete if t.user_attrs["latency_reused"])
    assert reused >= len(twins) and (shown.latency_timed, shown.latency_reused) == (len(complete) - reused, reused)

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

    data = ss.front(str(path))
    assert 1 <= len(data.front) <= 4
    assert _storage.snapshots(engine, "tiny"), "a Pareto snapshot is written every snapshot_every trials"

    # Resuming with a larger budget: the teacher is not trained again and old trials stay.
    messages.clear()
    spec2 = load_spec(path, trials=5)
    report = ss.run(spec2, log=messages.append)
    assert report.budget_completed == 5
    assert not any("training the teacher" in m for m in messages)
    again = optuna.load_study(study_name="tiny", storage=spec.study.storage)
    numbers = {t.number for t in again.get_trials(states=(TrialState.COMPLETE,))}
    assert {t.number for t in complete} <= numbers and len(numbers) == 5
    assert again.user_attrs["teacher_sha256"] == attrs["teacher_sha256"]


def test_size_budget_makes_the_front_feasible(tiny_study) -> None:
    # Early stopping off: every trial runs to the end, so the budget's effect on the front is seen alone.
    path = tiny_study(name="budget", trials=4, references=True, extra="\n[objectives]\nmax_size_kb = 1.5\n")
    path.write_text(path.read_text().replace("[study]\n", "[study]\nearly_stop = false\n", 1))
    spec = load_spec(path)
    ss.run(spec)
    data = ss.front(str(path))
    study = optuna.load_study(study_name="budget", storage=spec.study.storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert any(t.values[1] > 1.5 * 1024 for t in complete), f"{[t.values[1] for t in complete]}: the budget should bind for this test to mean anything"
    assert all(p.size_bytes <= 1.5 * 1024 for p in data.front)
    for t in complete:
        assert t.user_attrs["feasible"] == (t.values[1] <= 1.5 * 1024)


def test_plans_that_cannot_meet_the_size_budget_stop_before_training(tiny_study) -> None:
    path = tiny_study(name="early", trials=6, references=True, extra="\n[objectives]\nmax_size_kb = 1.5\n")
    spec = load_spec(path)
    report = ss.run(spec)
    assert report.budget_completed == 6
    study = optuna.load_study(study_name="early", storage=spec.study.storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    stopped = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) == 6 and stopped
    references = [t for t in complete if "reference" in t.user_attrs]
    assert references, "references are measured to the end, whatever their size"
    assert not all(t.user_attrs["feasible"] for t in references), "the uniform 8-bit reference alone is over 1.5 KB"
    for t in stopped:
        assert t.user_attrs["stopped_early"].startswith("size:")
        assert t.user_attrs["size_lower_bound"] > 1.5 * 1024
        assert "timings_s" not in t.user_attrs, "nothing was trained"
        assert t.constraints["max_size_kb"] > 0, "samplers see it as infeasible, by how far"
    median_full = sorted(t.user_attrs["trial_s"] for t in complete)[len(complete) // 2]
    assert all(t.user_attrs["trial_s"] < median_full for t in stopped)
    after_first = [t for t in stopped if t.number > min(c.number for c in complete)]
    assert all(t.user_attrs["saved_s"] > 0 for t in after_first)
    status = ss.status(str(path))
    assert status.stopped_early == len(stopped) and status.counts["PRUNED"] == len(stopped)


def test_a_student_far_below_min_accuracy_after_distillation_stops_there(tiny_study) -> None:
    from squeeze.objectives import load_task
    from squeeze.search._early import EarlyStop, StoppedEarly
    from squeeze.spaces import get_family
    from torch import nn

    path = tiny_study(name="acc", extra="\n[objectives]\nmin_accuracy = 0.9\n")
    spec = load_spec(path)
    data = load_task("digits", options={}, seed=0, holdout=0.3, data_dir=None)
    family = get_family("cnn")
    early = EarlyStop(spec, data=data, family=family)

    class Constant(nn.Module):
        """Always answers class 0: about 10% accurate on digits."""

        def forward(self, x):
            out = x.new_zeros(len(x), 10)
            out[:, 0] = 1
            return out

    with pytest.raises(StoppedEarly) as stop:
        early.after_stage("distil", Constant(), started=0.0)
    assert stop.value.attrs["distilled_train_accuracy"] < 0.2
    early.after_stage("prune", Constant(), started=0.0)  # only the distilled student is judged

    class Oracle(nn.Module):
        """Right on every training sample: never stopped."""

        def forward(self, x):
            index = {x_.numpy().tobytes(): int(y) for x_, y in zip(data.x_train, data.y_train)}
            return nn.functional.one_hot(torch.tensor([index[r.numpy().tobytes()] for r in x]), 10).float()

    early.after_stage("distil", Oracle(), started=0.0)


def test_the_same_study_file_trains_the_same_teacher_in_a_fresh_database(tiny_study, tmp_path) -> None:

    teachers = []
    for i in range(2):
        path = tiny_study(name="again", storage=f"sqlite:///{tmp_path / f'fresh{i}.db'}")
        spec = load_spec(path)
        data = ss.prepare(spec)
        # Whatever the process drew before must not reach the teacher's first weights.
        torch.rand(i + 1)
        teachers.append(_teacher.ensure_teacher(_context.connect(spec, create=True), data).model.state_dict())
    assert teachers[0].keys() == teachers[1].keys()
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])


def test_an_interrupted_teacher_training_releases_its_claim(tiny_study, monkeypatch) -> None:

    path = tiny_study(name="released")
    spec = load_spec(path)
    data = ss.prepare(spec)
    ctx = _context.connect(spec, create=True)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_teacher, "train_teacher", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _teacher.ensure_teacher(ctx, data)
    # No claim is left behind, so another worker claims it at once (no wait for the grace period).
    assert _teacher_store.get_teacher(ctx.engine, "released") is None
    assert _teacher_store.claim_teacher(ctx.engine, "released", "another-worker", stale_after_s=3600) is None


def test_early_stops_are_capped_beside_the_trials_run_to_the_end(tiny_study) -> None:
    from squeeze.objectives import load_task
    from squeeze.search._early import FREE_STOPS, EarlyStop, StoppedEarly
    from squeeze.spaces import CompressionPlan, get_family

    spec = load_spec(tiny_study(name="capped", extra="\n[objectives]\nmax_size_kb = 0.01\n"))
    data = load_task("digits", options={}, seed=0, holdout=0.3, data_dir=None)
    early = EarlyStop(spec, data=data, family=get_family("cnn"))
    plan = CompressionPlan()
    for _ in range(FREE_STOPS):
        with pytest.raises(StoppedEarly):
            early.before_training(plan, started=0.0)
    early.before_training(plan, started=0.0)  # over the cap: this one runs to the end
    early.finished(1.0)
    with pytest.raises(StoppedEarly):
        early.before_training(plan, started=0.0)


def _space(spec):
    from squeeze.spaces import JointSpace, get_family

    family = get_family(spec.task.family)
    teacher = family.build(spec.task.model, in_channels=1, num_classes=10)
    return JointSpace(family, spec.task.model, spec.space, teacher=teacher)


def test_a_study_opens_with_the_uniform_references_once(tiny_study) -> None:
    from squeeze.search._context import connect
    from squeeze.search._session import enqueue_references

    for sampler in ("auto", "random"):
        path = tiny_study(name=f"opening-{sampler}", trials=40, references=True)
        path.write_text(path.read_text().replace('sampler = "random"', f'sampler = "{sampler}"'))
        spec = load_spec(path)
        ctx = connect(spec, create=True)
        enqueue_references(ctx, _space(spec))
        enqueue_references(ctx, _space(spec))  # a second worker, or a resume: nothing more is enqueued
        waiting = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage).get_trials(
            states=(TrialState.WAITING,))
        assert len(waiting) == 4 and all("reference" in t.user_attrs for t in waiting)


def test_a_plan_drawn_twice_in_a_study_scores_the_same(tiny_study) -> None:
    # Every trial of a study trains with the study's seed: the same plan is the same artifact.
    path = tiny_study(name="twice", trials=2)
    path.write_text(path.read_text().replace("[study]\n", "[study]\nearly_stop = false\n", 1))
    spec = load_spec(path)
    ctx = _context.connect(spec, create=True)
    params = _space(spec).uniform_params(sparsity=0.5, bits=4, width=0.5)
    ctx.study.enqueue_trial(params)
    ctx.study.enqueue_trial(params)
    ss.run(spec)
    study = optuna.load_study(study_name="twice", storage=spec.study.storage)
    first, second = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert first.params == second.params
    assert first.values == second.values
    assert first.user_attrs["artifact_sha256"] == second.user_attrs["artifact_sha256"]


def test_a_plan_judged_already_stops_before_training_and_the_budget_goes_to_a_new_plan(tiny_study) -> None:
    path = tiny_study(name="repeat", trials=2)
    spec = load_spec(path)
    ctx = _context.connect(spec, create=True)
    params = _space(spec).uniform_params(sparsity=0.5, bits=4, width=0.5)
    ctx.study.enqueue_trial(params)
    ctx.study.enqueue_trial(params)
    report = ss.run(spec)
    assert report.budget_completed == 2
    study = optuna.load_study(study_name="repeat", storage=spec.study.storage)
    first, repeat, new = sorted(study.get_trials(), key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and new.state == TrialState.COMPLETE
    assert repeat.state == TrialState.PRUNED and repeat.params == first.params
    assert repeat.user_attrs["repeat_of"] == first.number
    assert repeat.user_attrs["stopped_early"].startswith("repeat:")
    assert "timings_s" not in repeat.user_attrs, "nothing was trained"
    assert new.user_attrs["plan"] != first.user_attrs["plan"], "the budget's second trial judged a new plan"
    assert ss.status(str(path)).stopped_early == 1


def _early_stop(path):
    """A worker's early-stopping rules for the study file at ``path``, on the digits data."""
    from squeeze.objectives import load_task
    from squeeze.search._early import EarlyStop
    from squeeze.spaces import get_family

    data = load_task("digits", options={}, seed=0, holdout=0.3, data_dir=None)
    return EarlyStop(load_spec(path), data=data, family=get_family("cnn"))


def test_plans_judged_already_are_skipped_at_most_a_few_in_a_row(tiny_study) -> None:
    from squeeze.search._early import REPEATS_SKIPPED, StoppedEarly
    from squeeze.spaces import CompressionPlan

    early = _early_stop(tiny_study(name="spent"))
    plan, other = CompressionPlan(bits={"conv": 4}), CompressionPlan(bits={"conv": 8})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0, 1.0], user_attrs={"plan": plan.to_dict()}))
    early.repeated(study, other, number=1, started=0.0)  # a new plan is judged
    for _ in range(REPEATS_SKIPPED):
        with pytest.raises(StoppedEarly):
            early.repeated(study, plan, number=1, started=0.0)
    early.repeated(study, plan, number=1, started=0.0)  # a space nearly spent: this one is judged anyway
    with pytest.raises(StoppedEarly):
        early.repeated(study, plan, number=1, started=0.0)


def test_of_two_workers_judging_one_plan_at_once_the_later_trial_stops(tiny_study) -> None:
    from squeeze.search._early import StoppedEarly
    from squeeze.spaces import CompressionPlan

    early = _early_stop(tiny_study(name="together"))
    plan = CompressionPlan(bits={"conv": 4})
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    running = study.ask()  # another worker's trial, judging the plan now
    running.set_user_attr("plan", plan.to_dict())
    with pytest.raises(StoppedEarly) as stop:
        early.repeated(study, plan, number=running.number + 1, started=0.0)
    assert stop.value.attrs["repeat_of"] == running.number
    assert "is judging" in stop.value.attrs["stopped_early"]
    early.repeated(study, plan, number=running.number - 1, started=0.0)  # the earlier trial judges it
    study.tell(running, state=TrialState.FAIL)
    early.repeated(study, plan, number=running.number + 1, started=0.0)  # a failed trial judged nothing
