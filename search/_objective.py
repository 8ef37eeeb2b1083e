"""The trial objective: a plan from the joint space, judged, its artifact stored, its budgets checked."""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import replace
from typing import Any

import optuna

from squeeze.objectives import Latency, TaskData, evaluate, free_models, measure, time_artifact
from squeeze.spaces import SqueezeError, get_family

from . import _storage as st
from ._artifact_store import artifact_name, register_artifact
from ._attrs import TrialAttr, judged_attrs
from ._check import StudySpace
from ._context import Context
from ._early import EarlyStop, StoppedEarly
from ._spec import StudySpec
from ._teacher import TeacherBundle
from . import _timing_store as ts
from ._timing import LatencyTarget, TimingHooks, ensure_baseline
from ._workers import AwaitTiming, Objective, write_params


def budget_violations(spec: StudySpec, values: tuple[float, float, float]) -> dict[str, float]:
    """How far a trial's values break the study's budgets (Optuna's convention: <= 0 is feasible)."""
    acc, size, ratio = values
    o = spec.objectives
    out: dict[str, float] = {}
    if o.max_size_kb is not None:
        out["max_size_kb"] = size / 1024 - o.max_size_kb
    if o.max_latency_ratio is not None:
        out["max_latency_ratio"] = ratio - o.max_latency_ratio
    if o.min_accuracy is not None:
        out["min_accuracy"] = o.min_accuracy - acc
    return out


def network_objective(ctx: Context, *, data: TaskData, teacher: TeacherBundle,
                      target: LatencyTarget | None = None) -> Objective:
    """The real objective: a plan from the joint space, judged by :func:`squeeze.objectives.evaluate`.

    Accuracy and the artifact are measured here, on any machine; latency only on the study's target
    (``target``, default the study's; :mod:`._timing`). On a machine of the target class the candidate
    is timed here, unless its network was measured already (then it takes that measurement);
    elsewhere it is stored and its trial waits (RUNNING) for a worker of the target class. The
    artifact is stored before the trial completes or waits, so every COMPLETE trial has the bytes its
    size and latency were measured on.
    """
    target = target or ctx.target
    assert target is not None, "connect() sets the study's latency target"
    timing = network_timing(ctx, data=data, teacher=teacher, target=target)
    spec = ctx.spec
    family = get_family(spec.task.family)
    spaces = StudySpace(ctx, teacher=teacher.model, data=data)
    latency = replace(spec.latency, target=target.cpu_class)

    early = EarlyStop(spec, data=data, family=family)

    def objective(trial: optuna.Trial) -> tuple[tuple[float, float, float], dict[str, Any]]:
        started = time.perf_counter()

        # The space as the study's check and its fences (from any worker) leave it now.
        space = spaces.current(trial.study)
        params = space.suggest(trial)
        plan = space.plan_for(params, in_channels=data.in_channels, num_classes=data.num_classes)
        trial.set_user_attr(TrialAttr.PLAN, plan.to_dict())  # other workers see the plan being judged
        write_params(trial)  # a retry after this worker dies runs the same plan
        # A reference is the yardstick a front is compared with, so it is always measured to the end.
        stoppable = TrialAttr.REFERENCE not in trial.user_attrs
        try:
            if stoppable:
                early.repeated(trial.study, plan, number=trial.number, started=started)
                early.before_training(plan, started=started)
            judged = evaluate(
                plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=family,
                options=spec.task.model, data=data, budget=spec.training, compress=spec.compress,
                latency=latency, seed=spec.training_seed(), device=spec.task.device,
                check=(lambda stage, model: early.after_stage(stage, model, started=started)) if stoppable else None,
                timed=False,
            )
        except StoppedEarly as stop:
            for key, violation in stop.constraints.items():
                trial.set_constraint(key, violation)
            raise
        except Exception as exc:
            # A part of the plan that fails alone is fenced, so the next trial is not failed the same way.
            spaces.fence_failure(trial.number, plan, exc)
            raise
        finally:
            free_models()
        early.finished(time.perf_counter() - started)
        attrs = judged_attrs(judged) | {TrialAttr.WORKER: socket.gethostname(), TrialAttr.RUNTIME: latency.runtime}
        # The draft (no latency figures in its card yet) is what a worker of the target times.
        st.store_artifact(ctx.engine, spec.study.name, trial.number, judged.artifact, judged.sha256)
        key = judged.latency_key
        found = ts.measured(ctx.engine, spec.study.name, key)
        if found is None and target.here():
            for name, value in attrs.items():
                trial.set_user_attr(name, value)  # what measure and complete read
            measured = timing.measure(trial, ensure_baseline(trial.study, target, timing))
            # Two workers of the target may time one network at once; the first stored is everyone's.
            found = ts.store_measured(ctx.engine, spec.study.name, key, trial=trial.number, latency=measured)
        if found is None:
            raise AwaitTiming(key, attrs)
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        measured_in, measured = found
        values = timing.complete(trial, measured, None if measured_in == trial.number else measured_in)
        return values, {}  # every attribute is on the trial already (the final size and digest among them)

    return objective


def network_timing(ctx: Context, *, data: TaskData, teacher: TeacherBundle, target: LatencyTarget) -> TimingHooks:
    """How a worker of the target class times a stored candidate and completes its trial."""
    spec = ctx.spec
    family = get_family(spec.task.family)
    latency = replace(spec.latency, target=target.cpu_class)
    example = data.x_train[:1]

    def stored(number: int) -> bytes:
        row = st.get_artifact(ctx.engine, spec.study.name, number)
        if row is None:
            raise SqueezeError(f"trial {number} has no stored artifact to time")
        return row.data

    def measure_trial(frozen: optuna.trial.FrozenTrial | optuna.Trial, baseline_ms: float | None) -> dict[str, Any]:
        lat, _ = time_artifact(stored(frozen.number), teacher_deployed=teacher.deployed, example=example,
                               latency=latency, family=family, baseline_ms=baseline_ms)
        return lat.attrs()

    def complete(trial: optuna.Trial, measured: dict[str, Any], from_trial: int | None) -> tuple[float, float, float]:
        lat = Latency(**measured)
        _, blob = time_artifact(stored(trial.number), teacher_deployed=teacher.deployed, example=example,
                                latency=latency, family=family, known=lat)
        sha = hashlib.sha256(blob).hexdigest()
        accuracy = float(trial.user_attrs[TrialAttr.ACCURACY])
        values = (accuracy, float(len(blob)), lat.ratio)
        attrs: dict[str, Any] = {
            TrialAttr.LATENCY: lat.attrs(), TrialAttr.LATENCY_REUSED: from_trial is not None,
            TrialAttr.SIZE_BYTES: len(blob), TrialAttr.ARTIFACT_SHA256: sha,
        }
        if from_trial is not None:
            attrs[TrialAttr.LATENCY_FROM_TRIAL] = from_trial
        constraints = budget_violations(spec, values)
        for key, violation in constraints.items():
            trial.set_constraint(key, violation)
        attrs[TrialAttr.FEASIBLE] = all(v <= 0 for v in constraints.values())
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        st.store_artifact(ctx.engine, spec.study.name, trial.number, blob, sha)
        # The same bytes in the study's Optuna artifact store, so optuna-dashboard offers them for download.
        register_artifact(ctx, blob, name=artifact_name(trial.number, spec.latency.runtime), trial=trial)
        return values

    def baseline() -> float:
        return measure(teacher.deployed, teacher.deployed, example, spec=latency).teacher_ms

    return TimingHooks(measure=measure_trial, complete=complete, baseline=baseline)
