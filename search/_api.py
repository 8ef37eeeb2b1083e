"""The public verbs behind the command line: run, status, front, plot, export, studies.

Every command of ``squeeze`` is one call here, so nothing the CLI does is impossible from Python.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from squeeze.objectives import decode, load_task
from squeeze.spaces import JointSpace, SqueezeError, checkpoint_of, get_family, load_checkpoint

from . import _storage as st
from ._pareto import FrontData, HypervolumeSample, Teacher, front_data, hypervolume, pareto_front, references_beaten
from ._plots import draw
from ._spec import DEFAULT_STORAGE, StudySpec, load_spec
from ._study import (
    GRACE_S,
    _study_exists,
    Context,
    WorkerReport,
    connect,
    enqueue_references,
    ensure_teacher,
    history,
    network_objective,
    points,
    run_worker,
    teacher_of,
)


@dataclass(frozen=True)
class Target:
    """Which study a command means: a name at a storage URL (and its spec, when given a file)."""

    name: str
    url: str
    spec: StudySpec | None = None


def resolve(study: str, *, storage: str | None = None, overrides: Sequence[str] = (), trials: int | None = None,
            data: str | None = None) -> Target:
    """A study file (``*.toml``) or a study name; ``storage`` (or ``SQUEEZE_STORAGE``) overrides the URL."""
    storage = st.resolve_url(storage) or None
    if study.endswith(".toml") or Path(study).is_file():
        spec = load_spec(study, overrides=overrides, storage=storage, trials=trials, data=data)
        return Target(spec.study.name, spec.study.storage, spec)
    return Target(study, storage or DEFAULT_STORAGE)


def _load_data(spec: StudySpec):
    return load_task(spec.task.dataset, options=spec.task.options, seed=spec.study.seed, holdout=spec.task.holdout,
                     data_dir=spec.task.data)


def run(
    spec: StudySpec,
    *,
    worker: int = 0,
    create: bool = True,
    log: Callable[[str], None] = lambda _: None,
    on_trial: Callable[[dict[str, int], optuna.trial.FrozenTrial | None], None] | None = None,
) -> WorkerReport:
    """Create or resume ``spec``'s study and work on it until its budget is met.

    Bad input is found before anything is written: the data is read and the storage reached first.
    """
    data = prepare(spec)
    ctx = connect(spec, create=create)
    teacher = ensure_teacher(ctx, data, log=log)
    family = get_family(spec.task.family)
    space = JointSpace(family, spec.task.model, spec.space, teacher=teacher.model)
    enqueue_references(ctx, space)
    objective = network_objective(ctx, data=data, teacher=teacher)

    report = run_worker(
        ctx, _storing(ctx, objective), worker=worker, on_trial=on_trial,
        teacher=Teacher(accuracy=teacher.accuracy, size_bytes=teacher.size_bytes, latency_ms=teacher.latency_ms),
    )
    return report


def prepare(spec: StudySpec):
    """Read the study's data and build its teacher once, untrained: the checks before anything is written.

    A missing or damaged data folder, a family whose factory raises, or a model that does not fit
    the data is bad input: found here it costs one sentence, not a half-created study with a stale
    teacher claim. Returns the task's data.
    """
    data = _load_data(spec)
    _check_model(spec, data)
    return data


def _check_model(spec: StudySpec, data) -> None:
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


def _storing(ctx: Context, objective):
    """Wrap the objective so each completed trial's artifact bytes are kept for export."""

    def run_trial(trial: optuna.Trial):
        values, attrs = objective(trial)
        blob = attrs.pop("_artifact", None)
        if blob is not None:
            st.store_artifact(ctx.engine, ctx.spec.study.name, trial.number, blob, attrs["artifact_sha256"])
        return values, attrs

    return run_trial


def run_local_workers(spec_path: str, *, workers: int, storage: str | None, overrides: Sequence[str],
                      trials: int | None, data: str | None) -> int:
    """Start ``workers`` local ``squeeze worker`` processes on one study and wait for them."""
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "squeeze.search._cli", "worker", spec_path, "--worker-id", str(i)]
        for o in overrides:
            cmd += ["--set", o]
        if trials is not None:
            cmd += ["--trials", str(trials)]
        if data:
            cmd += ["--data", data]
        env = dict(os.environ)
        if storage:
            env[st.STORAGE_ENV] = storage  # keeps a password off the process list
        procs.append(subprocess.Popen(cmd, env=env))
        time.sleep(0.5)
    codes = [p.wait() for p in procs]
    return max(codes) if codes else 0


@dataclass(frozen=True)
class Status:
    name: str
    url: str
    counts: dict[str, int]
    budget: int | None
    retries: int
    live_workers: int
    front_size: int
    hypervolume: float | None
    teacher: Teacher | None
    errors: list[tuple[int, str]] = field(default_factory=list)
    sampler: str | None = None
    """The sampler that proposed the latest trial (``auto`` switches as the study grows)."""
    sampler_ms: float | None = None
    """The sampler's median time per trial over the last 10 trials, in milliseconds."""
    trial_s: float | None = None
    """The median wall time of the last 10 finished trials, in seconds."""
    stopped_early: int = 0
    saved_s: float = 0.0
    """Trials stopped before the end (a budget they could not meet) and the time that saved, estimated."""
    latency_timed: int = 0
    latency_reused: int = 0
    """Completed trials that timed their network, and those that took an earlier trial's measurement of it."""
    references: int = 0
    anchors: int = 0
    local_moves: int = 0
    """Finished trials that were uniform references, ``auto``'s anchors, and its local moves; the rest the sampler proposed."""
    reference_moves: int = 0
    """Of the local moves, those that made a uniform reference smaller (``local_kind`` ``"reference"``)."""
    references_beaten: tuple[tuple[int, int | None], ...] = ()
    """Each completed uniform reference's trial, with the smallest front trial that dominates it (None: none does)."""


def _open(target: Target) -> tuple[optuna.Study, Any]:
    parsed = st.parse_url(target.url)
    missing = SqueezeError(f"study {target.name!r} does not exist in {st.safe_url(target.url)!r}.")
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise missing
    engine = st.engine_for(target.url)
    if not _study_exists(target.url, target.name):
        raise missing
    return optuna.load_study(study_name=target.name, storage=target.url), engine


def status(target: Target) -> Status:
    """Trials by state, retries, live workers (recent heartbeats), front size and hypervolume."""
    study, engine = _open(target)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    retries = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    grace = target.spec.study.grace_s if target.spec else GRACE_S
    live = len(st.live_workers(engine, target.name, within_s=grace))
    teacher = teacher_of(study)
    pts = points(study)
    front = pareto_front(pts)
    hv = hypervolume(pts, teacher=teacher) if teacher and pts else None
    stored = st.load_config(engine, target.name) if "squeeze_studies" in _tables(engine) else None
    budget = target.spec.study.trials if target.spec else (stored or {}).get("study", {}).get("trials")
    errors = [(t.number, str(t.user_attrs.get("error", ""))) for t in trials if t.state == TrialState.FAIL][-5:]
    recent = [t for t in trials if t.state.is_finished() and "sampler_ms" in t.user_attrs][-10:]
    timed = [t.user_attrs["trial_s"] for t in recent if "trial_s" in t.user_attrs]
    stopped = [t for t in trials if t.state == TrialState.PRUNED and "stopped_early" in t.user_attrs]
    measured = [t for t in trials if t.state == TrialState.COMPLETE and "latency_reused" in t.user_attrs]
    reused = sum(1 for t in measured if t.user_attrs["latency_reused"])
    return Status(
        target.name, st.safe_url(target.url), counts, budget, retries, live, len(front), hv, teacher, errors,
        sampler=recent[-1].user_attrs.get("sampler") if recent else None,
        sampler_ms=statistics.median(t.user_attrs["sampler_ms"] for t in recent) if recent else None,
        trial_s=statistics.median(timed) if timed else None,
        stopped_early=len(stopped), saved_s=sum(float(t.user_attrs.get("saved_s", 0.0)) for t in stopped),
        latency_timed=len(measured) - reused, latency_reused=reused,
        references_beaten=tuple((ref.number, by.number if by else None) for ref, by in references_beaten(pts)),
        reference_moves=sum(1 for t in trials
                            if t.state.is_finished() and t.user_attrs.get("local_kind") == "reference"),
        **{key: sum(1 for t in trials if t.state.is_finished() and attr in t.user_attrs)
           for key, attr in (("references", "reference"), ("anchors", "anchor"), ("local_moves", "local_from"))},
    )


def _tables(engine) -> list[str]:
    import sqlalchemy as sa

    return sa.inspect(engine).get_table_names()


def front(target: Target, *, include_infeasible: bool = False) -> FrontData:
    """The study's points, its feasible front, the teacher and the hypervolume history."""
    study, engine = _open(target)
    teacher = teacher_of(study)
    if teacher is None:
        raise SqueezeError(f"study {target.name!r} has no teacher yet; run it first.")
    pts = points(study)
    hist = tuple(HypervolumeSample(trials=c, hypervolume=h, elapsed_s=e) for c, h, e in history(engine, target.name))
    data = front_data(pts, teacher=teacher, history=hist)
    return data


def plot(target: Target, out_dir: str | Path) -> list[Path]:
    """Draw the study's projections, 3-D front and hypervolume plots (PNG and SVG)."""
    return draw(front(target), out_dir)


def list_studies(url: str) -> list[tuple[str, int, int]]:
    """(name, completed trials, all trials) of every study at ``url``."""
    parsed = st.parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        # Listing must not create an empty database where a path was mistyped.
        raise SqueezeError(f"there is no study database at {st.safe_url(url)!r}: `{parsed.database}` does not exist.")
    engine = st.engine_for(url)
    if "studies" not in _tables(engine):
        # A database with no study in it: say so, without creating Optuna's tables in it.
        return []
    out = []
    for summary in optuna.get_all_study_summaries(storage=url, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        out.append((summary.study_name, done, summary.n_trials))
    return out


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def export_trial(target: Target, number: int, out: str | Path) -> Path:
    """Write trial ``number``'s artifact to ``out``; the bytes its size was measured on."""
    study, engine = _open(target)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        held = f"it has trials 0 to {len(trials) - 1}" if trials else "it has no trials yet"
        raise SqueezeError(f"trial {number} does not exist in study {target.name!r} ({held}).")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise SqueezeError(f"trial {number} of study {target.name!r} is {trial.state.name}; only COMPLETE trials can be exported.")
    row = st.get_artifact(engine, target.name, number)
    if row is None:
        raise SqueezeError(f"trial {number} of study {target.name!r} has no stored artifact.")
    # With a study file, its family decodes the bytes; with a study name, only a built-in family can:
    # a user's factory is never imported because a database names it (the refusal asks for the file).
    family = get_family(target.spec.task.family) if target.spec is not None else None
    decode(row.data, source=f"trial {number} of study {target.name!r}", family=family)
    return _write(Path(out), row.data)


def export_front(target: Target, out_dir: str | Path) -> list[Path]:
    """Write every front member's artifact into ``out_dir`` as ``trial-<N>.squeeze``."""
    data = front(target)
    folder = Path(out_dir)
    paths = []
    for p in data.front:
        name = _SAFE_NAME.sub("_", f"trial-{p.number}.squeeze")
        dest = (folder / name).resolve()
        if folder.resolve() not in dest.parents:
            raise SqueezeError(f"export path {dest} escapes the folder {folder}.")
        paths.append(export_trial(target, p.number, dest))
    return paths


def _write(path: Path, blob: bytes) -> Path:
    """Write atomically: a temporary file beside ``path``, then a rename, so nothing is half-written."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise SqueezeError(f"cannot write `{path}`: `{folder}` is a file, not a folder.")
    if path.is_dir():
        raise SqueezeError(f"cannot write `{path}`: it is a folder; name a file, or use --front for a folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as exc:
        raise SqueezeError(f"cannot write `{path}`: {exc.strerror or exc}.") from None
    return path
