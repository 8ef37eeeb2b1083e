"""A study's life: create or resume, train the teacher once, run trials, keep the front.

Workers use Optuna's ask-and-tell interface rather than ``study.optimize`` so that the global
budget can be reserved under a lock: a trial starts only while completed + running trials are
below the budget, which makes the final count exact however many workers share the study.
The worker loop itself (budget, heartbeats, stale-trial retry, signals) is in ``_workers.py``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from squeeze.objectives import (
    TaskData,
    accuracy,
    decode,
    evaluate_plan,
    measure,
    teacher_artifact,
    train_teacher,
    training_device,
)
from squeeze.spaces import JointSpace, SqueezeError, checkpoint_of, get_family, load_checkpoint

from . import _storage as st
from ._early import EarlyStop, StoppedEarly
from ._latencies import LatencyBook
from ._pareto import Point, Teacher, hypervolume, pareto_front
from ._spec import StudyOptions, StudySpec
from ._workers import Objective, WorkerReport, retry_callback, work, worker_seed, write_params
from .samplers import anchor_params, make_sampler, reference_params, startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
# We drive heartbeats ourselves around ask-and-tell (see _TrialHeartbeat), which Optuna warns about.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DIRECTIONS = ["maximize", "minimize", "minimize"]
HEARTBEAT_S = StudyOptions.heartbeat_s
GRACE_S = StudyOptions.grace_s
"""Defaults; a study's own are ``spec.study.heartbeat_s`` and ``spec.study.grace_s``."""


def _optuna_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> RDBStorage:
    st.ensure_sqlite_folder(url)
    return RDBStorage(
        url,
        engine_kwargs={"pool_pre_ping": True} | ({"connect_args": {"timeout": 60}} if st.is_sqlite(url) else {}),
        heartbeat_interval=heartbeat_s,
        grace_period=grace_s,
        heartbeat_stale_trial_callback=retry_callback(),
    )


@dataclass
class Context:
    """Everything a worker holds for one study."""

    spec: StudySpec
    url: str
    engine: sa.Engine
    storage: RDBStorage
    study: optuna.Study


def _diff(stored: Any, current: Any, prefix: str = "") -> str | None:
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            found = _diff(stored.get(key), current.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if stored == current else f"`{prefix}` is {stored!r} in the stored study but {current!r} in the file"


def connect(spec: StudySpec, *, create: bool) -> Context:
    """Open (and, if ``create``, create) the study named in ``spec`` at its storage.

    Nothing is written when the storage is unreachable, when the study is missing and
    ``create`` is false, or when a stored study's config differs from ``spec``.
    """
    url = spec.study.storage
    st.parse_url(url)
    st.ensure_sqlite_folder(url)
    engine = st.engine_for(url)
    name = spec.study.name
    existing = _study_exists(url, name)
    if not existing and not create:
        raise SqueezeError(
            f"study {name!r} does not exist in {st.safe_url(url)!r}; start it with `squeeze run` first."
        )
    if existing:
        stored = st.load_config(engine, name) if _has_tables(engine) else None
        if stored is not None:
            difference = _diff(_comparable(stored), spec.comparable())
            if difference:
                raise SqueezeError(f"cannot resume study {name!r}: {difference}; use a new study name.")
    with st.schema_lock(engine):
        # Several workers starting a new database at once would race on CREATE TABLE.
        st.create_tables(engine)
        storage = _optuna_storage(url, heartbeat_s=spec.study.heartbeat_s, grace_s=spec.study.grace_s)
        study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS, load_if_exists=True)
    with st.study_lock(engine, name):
        stored = st.save_config(engine, name, spec.to_dict())
        difference = _diff(_comparable(stored), spec.comparable())
        if difference:
            raise SqueezeError(f"cannot resume study {name!r}: {difference}; use a new study name.")
        if not study.user_attrs.get("squeeze_created"):
            study.set_user_attr("squeeze_created", True)
            study.set_user_attr("objectives", ["accuracy", "size_bytes", "latency_ratio"])
    return Context(spec=spec, url=url, engine=engine, storage=storage, study=study)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in config.items() if k != "study"}
    d.get("task", {}).pop("data", None)
    return d


def _has_tables(engine: sa.Engine) -> bool:
    return "squeeze_studies" in sa.inspect(engine).get_table_names()


def _study_exists(url: str, name: str) -> bool:
    engine = st.engine_for(url)
    if "studies" not in sa.inspect(engine).get_table_names():
        return False
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM studies WHERE study_name = :n"), {"n": name}).scalar_one() > 0


# --------------------------------------------------------------------------- teacher


@dataclass
class TeacherBundle:
    model: torch.nn.Module
    deployed: torch.nn.Module
    accuracy: float
    size_bytes: int
    latency_ms: float
    sha256: str


def _state_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def ensure_teacher(ctx: Context, data: TaskData, *, log: Callable[[str], None] = lambda _: None) -> TeacherBundle:
    """The study's teacher: loaded from the database, or trained once here and stored."""
    from safetensors.torch import load

    spec = ctx.spec
    family = get_family(spec.task.family)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    row = st.claim_teacher(ctx.engine, spec.study.name, owner, stale_after_s=spec.study.grace_s)
    # The teacher's first weights come from the study's seed, not from whatever the process drew
    # before: the same study file trains the same teacher in any fresh database.
    torch.manual_seed(spec.study.seed)
    model = family.build(spec.task.model, in_channels=data.in_channels, num_classes=data.num_classes)
    if row is None:
        checkpoint = checkpoint_of(spec.task.model)
        log("loading the teacher's checkpoint" if checkpoint else "training the teacher (once per study)")
        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(ctx.engine, spec.study.name, owner, stop, spec.study.heartbeat_s),
                                daemon=True)
        beat.start()
        try:
            if checkpoint:
                # A trained teacher: no training; it is measured and stored like a trained one.
                load_checkpoint(model, checkpoint, family=spec.task.family)
            else:
                train_teacher(model, data.x_train, data.y_train, budget=spec.training, seed=spec.study.seed,
                              device=training_device(spec.task.device))
            weights = _state_bytes(model)
            art = teacher_artifact(model, family=family, options=spec.task.model, data=data)
            deployed = decode(art, family=family).module
            acc = accuracy(deployed, data.x_holdout, data.y_holdout)
            lat = measure(deployed, deployed, data.x_train[:1], spec=spec.latency)
            import hashlib

            st.store_teacher(ctx.engine, spec.study.name, owner, weights=weights, artifact=art,
                             sha256=hashlib.sha256(weights).hexdigest(), accuracy=acc, size_bytes=len(art),
                             latency_ms=lat.teacher_ms)
        except BaseException:
            # Ctrl-C, or a teacher that cannot be trained: the next run starts at once, not after grace_s.
            try:
                st.release_teacher(ctx.engine, spec.study.name, owner)
            except Exception:  # noqa: BLE001 - the claim then goes stale after grace_s, as if killed
                pass
            raise
        finally:
            stop.set()
        row = st.get_teacher(ctx.engine, spec.study.name)
        assert row is not None
        ctx.study.set_user_attr("teacher_accuracy", row.accuracy)
        ctx.study.set_user_attr("teacher_bytes", row.size_bytes)
        ctx.study.set_user_attr("teacher_latency_ms", row.latency_ms)
        ctx.study.set_user_attr("teacher_sha256", row.sha256)
    else:
        log("loading the stored teacher")
    try:
        model.load_state_dict(load(row.weights))
    except RuntimeError:
        raise SqueezeError(
            f"the stored teacher of study {spec.study.name!r} does not fit `task.model`; use a new study name."
        ) from None
    model.eval()
    # The family is the study file's, never a name read from the stored bytes (the database may come from elsewhere).
    deployed = decode(row.artifact, source=f"the stored teacher of study {spec.study.name!r}", family=family).module
    return TeacherBundle(model=model, deployed=deployed, accuracy=row.accuracy, size_bytes=row.size_bytes,
                         latency_ms=row.latency_ms, sha256=row.sha256)


def _beat(engine: sa.Engine, study: str, owner: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            st.beat_teacher(engine, study, owner)
        except Exception:  # noqa: BLE001 - a missed beat only risks another worker taking over
            pass


# --------------------------------------------------------------------------- workers


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
    """The real objective: a plan from the joint space, judged by :func:`evaluate_plan`."""
    spec = ctx.spec
    family = get_family(spec.task.family)
    space = JointSpace(family, spec.task.model, spec.space, teacher=teacher.model)

    early = EarlyStop(spec, data=data, family=family)
    book = LatencyBook()

    def objective(trial: optuna.Trial) -> tuple[tuple[float, float, float], dict[str, Any]]:
        started = time.perf_counter()

        params = space.suggest(trial)
        write_params(trial)  # a retry after this worker dies runs the same plan
        plan = space.plan_for(params, in_channels=data.in_channels, num_classes=data.num_classes)
        # A reference is the yardstick a front is compared with, so it is always measured to the end.
        stoppable = "reference" not in trial.user_attrs
        try:
            if stoppable:
                early.before_training(plan, started=started)
            judged = evaluate_plan(
                plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=family,
                options=spec.task.model, data=data, budget=spec.training, compress=spec.compress,
                latency=spec.latency, seed=training_seed(spec), device=spec.task.device,
                check=(lambda stage, model: early.after_stage(stage, model, started=started)) if stoppable else None,
                known_latency=lambda key: book.measured(trial.study, key),
            )
        except StoppedEarly as stop:
            for key, violation in stop.constraints.items():
                trial.set_constraint(key, violation)
            raise
        early.finished(time.perf_counter() - started)
        attrs = judged.attrs() | {"worker": socket.gethostname(), "_artifact": judged.artifact}
        if judged.latency_reused:
            attrs["latency_from_trial"] = book.measured_in(judged.latency_key)
        values = (judged.accuracy, float(judged.size_bytes), judged.latency.ratio)
        constraints = budget_violations(spec, values)
        for key, violation in constraints.items():
            trial.set_constraint(key, violation)
        attrs["feasible"] = all(v <= 0 for v in constraints.values())
        return values, attrs

    return objective


def training_seed(spec: StudySpec) -> int:
    """The seed every trial of a study trains with.

    One seed for all trials (common random numbers): two plans are trained from the same
    initialisation on the same batches, so the difference between their scores is the difference
    between the plans, not between two draws of training noise (which, for one plan, spans more
    than a point of accuracy on MNIST); and a plan drawn again scores what it scored before.
    """
    return spec.study.seed * 10_007


def enqueue_references(ctx: Context, space: JointSpace) -> None:
    """Enqueue the uniform reference policies, and the ``auto`` sampler's anchors, once, when the study is new."""
    spec = ctx.spec.study
    anchored = spec.anchors and spec.sampler == "auto"
    if not (spec.references or anchored) or ctx.study.user_attrs.get("references_enqueued"):
        return
    with st.study_lock(ctx.engine, spec.name):
        ctx.study = optuna.load_study(study_name=spec.name, storage=ctx.storage)
        if ctx.study.user_attrs.get("references_enqueued"):
            return
        references = reference_params(ctx.spec, space) if spec.references else []
        for label, params in references:
            ctx.study.enqueue_trial(params, user_attrs={"reference": label}, skip_if_exists=True)
        if anchored:
            slots = min(startup_trials(spec.trials), spec.trials) - len(references)
            for label, params in anchor_params(ctx.spec, space, slots=slots, taken=[p for _, p in references]):
                ctx.study.enqueue_trial(params, user_attrs={"anchor": label}, skip_if_exists=True)
        ctx.study.set_user_attr("references_enqueued", True)


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
    front = _RunningFront()

    def after_trial(counts: dict[str, int], frozen: optuna.trial.FrozenTrial) -> None:
        if teacher is not None and frozen.state == TrialState.COMPLETE:
            _maybe_snapshot(ctx, ctx.study, counts["COMPLETE"], teacher, front=front)
        if on_trial:
            on_trial(counts, frozen)

    return work(ctx, objective, sampler=sampler, worker=worker, on_trial=after_trial, poll_s=poll_s,
                handle_signals=handle_signals)


def points(study: optuna.Study, *, teacher: Teacher | None = None) -> list[Point]:
    """Every completed trial as a :class:`Point`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    start = min((t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start), default=None)
    out = []
    for t in trials:
        plan = t.user_attrs.get("plan", {})
        bits = list(plan.get("bits", {}).values())
        sparsity = list(plan.get("sparsity", {}).values())
        student = plan.get("student", {})
        out.append(Point(
            number=t.number,
            accuracy=float(t.values[0]),
            size_bytes=int(t.values[1]),
            latency_ratio=float(t.values[2]),
            latency_ms=(t.user_attrs.get("latency") or {}).get("candidate_ms"),
            mean_bits=sum(bits) / len(bits) if bits else 32.0,
            mean_sparsity=sum(sparsity) / len(sparsity) if sparsity else 0.0,
            student=_describe_student(student),
            feasible=bool(t.user_attrs.get("feasible", True)),
            reference="reference" in t.user_attrs,
            finished_s=(t.datetime_complete - start).total_seconds() if (start and t.datetime_complete) else None,
        ))
    return out


def _describe_student(student: dict[str, dict[str, Any]]) -> str:
    width = student.get("width", {})
    depth = student.get("depth", {})
    parts = []
    if width:
        parts.append("w=" + "/".join(f"{v:g}" for _, v in sorted(width.items())))
    if depth:
        parts.append("d=" + "/".join(str(v) for _, v in sorted(depth.items())))
    return " ".join(parts) or "full"


def teacher_of(study: optuna.Study) -> Teacher | None:
    attrs = study.user_attrs
    if "teacher_bytes" not in attrs:
        return None
    return Teacher(accuracy=attrs["teacher_accuracy"], size_bytes=attrs["teacher_bytes"],
                   latency_ms=attrs.get("teacher_latency_ms"))


class _RunningFront:
    """A worker's Pareto front between snapshots, so a snapshot costs the new points, not all of them.

    Dominance is transitive, so the front of (the last front + the points since) is the front of
    every point; and the hypervolume of a set is that of its front.
    """

    def __init__(self) -> None:
        self.front: list[Point] = []
        self.seen: set[int] = set()

    def update(self, pts: list[Point]) -> list[Point]:
        new = [p for p in pts if p.number not in self.seen]
        self.seen.update(p.number for p in new)
        self.front = pareto_front(self.front + new)
        return self.front


def _maybe_snapshot(ctx: Context, study: optuna.Study, completed: int, teacher: Teacher, *,
                    front: _RunningFront) -> None:
    every = ctx.spec.study.snapshot_every
    if completed % every and completed != ctx.spec.study.trials:
        return
    pts = points(study)
    members = front.update(pts)
    hv = hypervolume(members, teacher=teacher)
    elapsed = max((p.finished_s or 0.0) for p in pts) if pts else None
    st.add_snapshot(ctx.engine, ctx.spec.study.name, completed=completed, front=[p.number for p in members],
                    hypervolume=hv, elapsed_s=elapsed)


def history(engine: sa.Engine, name: str) -> list[tuple[int, float, float | None]]:
    """(completed trials, hypervolume, elapsed seconds) of every stored snapshot."""
    return [(r.completed, r.hypervolume, r.elapsed_s) for r in st.snapshots(engine, name)]
