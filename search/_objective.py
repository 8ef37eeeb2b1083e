"""The trial objective: a plan from the joint space, judged, its artifact stored, its budgets checked."""

from __future__ import annotations

import socket
import time
from typing import Any

import optuna

from squeeze.objectives import TaskData, evaluate
from squeeze.spaces import get_family

from . import _storage as st
from ._artifact_store import artifact_name, register_artifact
from ._attrs import TrialAttr, judged_attrs
from ._check import StudySpace
from ._context import Context
from ._early import EarlyStop, StoppedEarly
from ._latencies import LatencyBook
from ._spec import StudySpec
from ._teacher import TeacherBundle
from ._workers import Objective, write_params


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


def network_objective(ctx: Context, *, data: TaskData, teacher: TeacherBundle) -> Objective:
    """The real objective: a plan from the joint space, judged by :func:`squeeze.objectives.evaluate`.

    A completed trial's artifact is stored before its values are returned, so every COMPLETE
    trial has the bytes its size and latency were measured on.
    """
    spec = ctx.spec
    family = get_family(spec.task.family)
    spaces = StudySpace(ctx, teacher=teacher.model, data=data)

    early = EarlyStop(spec, data=data, family=family)
    book = LatencyBook()

    def objective(trial: optuna.Trial) -> tuple[tuple[float, float, float], dict[str, Any]]:
        started = time.perf_counter()

        # The space as the study's check and its fences (from any worker) leave it now.
        space = spaces.current(trial.study)
        params = space.suggest(trial)
        write_params(trial)  # a retry after this worker dies runs the same plan
        plan = space.plan_for(params, in_channels=data.in_channels, num_classes=data.num_classes)
        # A reference is the yardstick a front is compared with, so it is always measured to the end.
        stoppable = TrialAttr.REFERENCE not in trial.user_attrs
        try:
            if stoppable:
                early.before_training(plan, started=started)
            judged = evaluate(
                plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=family,
                options=spec.task.model, data=data, budget=spec.training, compress=spec.compress,
                latency=spec.latency, seed=spec.training_seed(), device=spec.task.device,
                check=(lambda stage, model: early.after_stage(stage, model, started=started)) if stoppable else None,
                known_latency=lambda key: book.measured(trial.study, key),
            )
        except StoppedEarly as stop:
            for key, violation in stop.constraints.items():
                trial.set_constraint(key, violation)
            raise
        except Exception as exc:
            # A part of the plan that fails alone is fenced, so the next trial is not failed the same way.
            spaces.fence_failure(trial.number, plan, exc)
            raise
        early.finished(time.perf_counter() - started)
        attrs = judged_attrs(judged) | {TrialAttr.WORKER: socket.gethostname()}
        if judged.latency_reused:
            attrs[TrialAttr.LATENCY_FROM_TRIAL] = book.measured_in(judged.latency_key)
        values = (judged.accuracy, float(judged.size_bytes), judged.latency.ratio)
        constraints = budget_violations(spec, values)
        for key, violation in constraints.items():
            trial.set_constraint(key, violation)
        attrs[TrialAttr.FEASIBLE] = all(v <= 0 for v in constraints.values())
        st.store_artifact(ctx.engine, spec.study.name, trial.number, judged.artifact, judged.sha256)
        # The same bytes in the study's Optuna artifact store, so optuna-dashboard offers them for download.
        register_artifact(ctx, judged.artifact, name=artifact_name(trial.number, spec.latency.runtime), trial=trial)
        return values, attrs

    return objective
