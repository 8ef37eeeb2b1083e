"""A study opened for work: its data read, its context, teacher, space and objective, and the worker entry.

:func:`open_session` does, in order, what must happen before a worker's first trial: read the data
and build the teacher untrained (bad input ends there, before anything is written), connect (create
or resume), ensure the teacher, enqueue the references once, and build the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from squeeze.objectives import Judged, Latency, TaskData, evaluate, load_task
from squeeze.spaces import CompressionPlan, JointSpace, SqueezeError, checkpoint_of, get_family, load_checkpoint

from . import _storage as st
from ._attrs import StudyAttr, TrialAttr
from ._check import check_new_study, record_check
from ._context import Context, connect, quiet_optuna
from . import _timing_store as ts
from ._objective import network_objective, network_timing
from ._pareto import Point, Teacher
from ._readers import points
from ._snapshots import RunningFront, maybe_snapshot
from ._spec import StudySpec
from ._teacher import TeacherBundle, ensure_teacher
from ._timing import LatencyTarget, Timer, TimingHooks, ensure_target
from ._workers import Objective, WorkerReport, work_loop, worker_seed
from .samplers import make_sampler, reference_params


def _load_data(spec: StudySpec) -> TaskData:
    return load_task(spec.task.dataset, options=spec.task.options, seed=spec.study.seed, holdout=spec.task.holdout,
                     test=spec.task.test, data_dir=spec.task.data)


def prepare(spec: StudySpec) -> TaskData:
    """Read the study's data and build its teacher once, untrained: the checks before anything is written.

    A missing or damaged data folder, a family whose factory raises, or a model that does not fit
    the data is bad input: found here it costs one sentence, not a half-created study with a stale
    teacher claim. Returns the task's data.
    """
    data = _load_data(spec)
    _check_model(spec, data)
    return data


def _check_model(spec: StudySpec, data: TaskData) -> None:
    import torch

    family = get_family(spec.task.family)
    try:
        model = family.build(spec.task.model, in_channels=data.in_channels, num_classes=data.num_classes)
        with torch.no_grad():
            out = model.eval()(data.x_train[:1])
        if tuple(out.shape) != (1, data.num_classes):
            raise ValueError(f"it gives outputs of shape {tuple(out.shape)}, not (1, {data.num_classes})")
    except Exception as exc:  # noqa: BLE001 - any failure here means the same to the user
        raise SqueezeError(
            f"model family {spec.task.family!r} cannot build a teacher from `task.model` = {dict(spec.task.model)} "
            f"for task {spec.task.dataset!r}: {type(exc).__name__}: {str(exc).rstrip('.')}."
        ) from None
    checkpoint = checkpoint_of(spec.task.model)
    if checkpoint:
        # A checkpoint that does not fit is its own sentence (it names the file), found before anything is written.
        load_checkpoint(model, checkpoint, family=spec.task.family)


@dataclass
class Session:
    """A study opened for work: what a worker holds between trials."""

    ctx: Context
    data: TaskData
    teacher: TeacherBundle
    space: JointSpace
    objective: Objective
    target: LatencyTarget
    timing: TimingHooks

    @property
    def spec(self) -> StudySpec:
        return self.ctx.spec

    @property
    def study(self) -> optuna.Study:
        return self.ctx.study

    @property
    def teacher_figures(self) -> Teacher:
        """The teacher's accuracy, bytes and latency, as fronts and hypervolumes use them."""
        t = self.teacher
        return Teacher(accuracy=t.accuracy, size_bytes=t.size_bytes, latency_ms=t.latency_ms)

    def work(
        self,
        *,
        worker: int = 0,
        sampler: optuna.samplers.BaseSampler | None = None,
        trials: int | None = None,
        on_trial: Callable[[dict[str, int], optuna.trial.FrozenTrial], None] | None = None,
        handle_signals: bool = True,
        timing_only: bool = False,
    ) -> WorkerReport:
        """Run trials until the study holds ``trials`` (default: its budget) completed ones, snapshotting the front.

        ``sampler`` replaces the study's own (for example Optuna's ``PartialFixedSampler`` around it).
        On a machine of the study's latency target, waiting candidates are timed before new ones are
        trained; ``timing_only``: only that.
        """
        if trials is not None and trials != self.spec.study.trials:
            self.ctx = connect(replace(self.spec, study=replace(self.spec.study, trials=trials)), create=False)
        timer = Timer(self.ctx, self.timing, target=self.target)
        return run_worker(self.ctx, self.objective, worker=worker, sampler=sampler, on_trial=on_trial,
                          handle_signals=handle_signals, teacher=self.teacher_figures, timer=timer,
                          timing_only=timing_only)

    def points(self) -> list[Point]:
        """Every completed trial of the study as a :class:`Point`."""
        return points(optuna.load_study(study_name=self.spec.study.name, storage=self.ctx.storage))

    def artifact(self, number: int) -> bytes:
        """The stored artifact of completed trial ``number``: the bytes it was measured on."""
        row = st.get_artifact(self.ctx.engine, self.spec.study.name, number)
        if row is None:
            raise SqueezeError(f"trial {number} of study {self.spec.study.name!r} has no stored artifact.")
        return row.data

    def _measured(self, key: str) -> Latency | None:
        found = ts.measured(self.ctx.engine, self.spec.study.name, key)
        return Latency(**found[1]) if found else None

    def evaluate(self, plan: CompressionPlan, *, seed: int | None = None) -> Judged:
        """Judge ``plan`` as a trial of this study would, under training seed ``seed`` (default: the study's).

        Nothing is stopped early or stored; a network the study has measured on its target keeps that
        measurement, so plans retrained under other seeds differ only in what training changes. The
        rest is timed here, whatever this machine's class.
        """
        spec = self.spec
        return evaluate(
            plan, teacher=self.teacher.model, teacher_deployed=self.teacher.deployed,
            family=get_family(spec.task.family), options=spec.task.model, data=self.data, budget=spec.training,
            compress=spec.compress, latency=replace(spec.latency, target=self.target.cpu_class),
            device=spec.task.device, seed=spec.training_seed() if seed is None else seed,
            known_latency=self._measured,
        )


def open_session(spec: StudySpec, *, create: bool = True, log: Callable[[str], None] = lambda _: None) -> Session:
    """Open ``spec``'s study for work: data, study (created when ``create``), check, teacher, references, objective.

    Bad input is found before anything is written: the data is read, the model built and, for a new
    study, what can be compressed checked first (a study with nothing to search is refused there).
    """
    st.check_readable(spec.study.storage)
    data = prepare(spec)
    check = check_new_study(spec, data, log=log) if create else None
    ctx = connect(spec, create=create)
    narrowing = record_check(ctx, check, data)
    teacher = ensure_teacher(ctx, data, log=log)
    space = JointSpace(get_family(spec.task.family), spec.task.model, spec.space, teacher=teacher.model,
                       narrowing=narrowing)
    enqueue_references(ctx, space)
    target = ctx.target or ensure_target(ctx)
    return Session(ctx=ctx, data=data, teacher=teacher, space=space, target=target,
                   objective=network_objective(ctx, data=data, teacher=teacher, target=target),
                   timing=network_timing(ctx, data=data, teacher=teacher, target=target))


def enqueue_references(ctx: Context, space: JointSpace) -> None:
    """Enqueue the uniform reference policies once, when the study is new."""
    spec = ctx.spec.study
    if not spec.references or ctx.study.user_attrs.get(StudyAttr.REFERENCES_ENQUEUED):
        return
    with st.study_lock(ctx.engine, spec.name):
        ctx.study = optuna.load_study(study_name=spec.name, storage=ctx.storage)
        if ctx.study.user_attrs.get(StudyAttr.REFERENCES_ENQUEUED):
            return
        for label, params in reference_params(ctx.spec, space):
            ctx.study.enqueue_trial(params, user_attrs={TrialAttr.REFERENCE: label}, skip_if_exists=True)
        ctx.study.set_user_attr(StudyAttr.REFERENCES_ENQUEUED, True)


def run_worker(
    ctx: Context,
    objective: Objective,
    *,
    worker: int = 0,
    on_trial: Callable[[dict[str, int], optuna.trial.FrozenTrial], None] | None = None,
    poll_s: float = 1.0,
    handle_signals: bool = True,
    teacher: Teacher | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    timer: Timer | None = None,
    timing_only: bool = False,
) -> WorkerReport:
    """Run trials until the study holds ``spec.study.trials`` completed ones, or a signal arrives.

    The budget is global and exact; stale trials of dead workers are failed (and retried once)
    first; SIGINT/SIGTERM let no new trial start, fail the running one cleanly and return (see
    ``_workers.py``). With ``teacher``, the front and its hypervolume are snapshotted every
    ``study.snapshot_every`` completed trials. ``sampler`` replaces the study's own (for example
    Optuna's ``PartialFixedSampler`` around it, to search a part of the space).
    """
    spec = ctx.spec
    sampler = sampler or make_sampler(spec.study.sampler, seed=worker_seed(spec.study.seed, worker), trials=spec.study.trials)
    front = RunningFront()

    def after_trial(counts: dict[str, int], frozen: optuna.trial.FrozenTrial) -> None:
        if teacher is not None and frozen.state == TrialState.COMPLETE:
            maybe_snapshot(ctx, ctx.study, counts["COMPLETE"], teacher, front=front)
        if on_trial:
            on_trial(counts, frozen)

    with quiet_optuna():
        return work_loop(ctx, objective, sampler=sampler, worker=worker, on_trial=after_trial, poll_s=poll_s,
                         handle_signals=handle_signals, timer=timer, timing_only=timing_only)


def work_on(
    spec: StudySpec,
    objective: Objective,
    *,
    create: bool = False,
    worker: int = 0,
    sampler: optuna.samplers.BaseSampler | None = None,
    teacher: Teacher | None = None,
    on_trial: Callable[[dict[str, int], optuna.trial.FrozenTrial], None] | None = None,
    handle_signals: bool = True,
    timing: TimingHooks | None = None,
    timing_only: bool = False,
) -> WorkerReport:
    """The worker loop (exact budget, heartbeats, retries, signals) around an objective of your own.

    ``objective(trial)`` returns ``((accuracy, size_bytes, latency_ratio), attrs)``, or raises
    ``AwaitTiming`` to leave the latency to a worker of the study's target class, which times it with
    ``timing``; it should call nothing slow before it has suggested its parameters. With ``teacher``,
    the front is snapshotted as in a real study. No data is read and no teacher trained: this is for
    measuring the machinery.
    """
    ctx = connect(spec, create=create)
    timer = Timer(ctx, timing, target=ctx.target or ensure_target(ctx)) if timing is not None else None
    return run_worker(ctx, objective, worker=worker, sampler=sampler, teacher=teacher, on_trial=on_trial,
                      handle_signals=handle_signals, timer=timer, timing_only=timing_only)
