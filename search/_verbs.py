"""The public verbs: run, work, check, front, plot, list_studies. Every ``squeeze`` command is one call here or in
:mod:`squeeze.search`'s other verbs (status, export), so nothing the CLI does is impossible from Python.

A verb's ``study`` is a study file (``*.toml``), a :class:`StudySpec`, or, for the verbs that only read,
a study name; ``storage`` (else ``$SQUEEZE_STORAGE``) overrides the study file's storage URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from squeeze.spaces import SqueezeError

from . import _storage as st
from ._check import SpaceCheck, check_new_study, record_check, run_check
from ._context import connect
from ._export import export_front as _export_front
from ._export import export_trial
from ._finalize import run_finals
from ._front import front_of
from ._pareto import FrontData
from ._plots import draw
from ._session import Session, open_session, prepare
from ._spec import DEFAULT_STORAGE, StudySpec
from ._status import Status, study_status
from ._timing import refuse_timing_only
from ._target import StudyRef, Target, resolve
from ._workers import WorkerReport

OnTrial = Callable[[dict[str, int], "optuna.trial.FrozenTrial | None"], None]


def _needs_file(target: Target, study: StudyRef, verb: str) -> StudySpec:
    if target.spec is None:
        raise SqueezeError(f"`squeeze {verb}` needs a study file (*.toml), but got {os.fspath(study)!r}.")
    return target.spec


def run(
    study: StudyRef,
    *,
    trials: int | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
    data: str | None = None,
    worker: int = 0,
    log: Callable[[str], None] = lambda _: None,
    on_trial: OnTrial | None = None,
) -> WorkerReport:
    """Create or resume the study and work on it in this process until it holds ``trials`` completed trials.

    ``trials`` overrides ``study.trials``; ``overrides`` are ``KEY=VALUE`` strings as on the command line;
    ``data`` overrides ``task.data``. Bad input is found before anything is written. ``on_trial(counts,
    trial)`` is called after every trial; ``log`` gets one-line messages (the teacher's training, say).
    """
    target = resolve(study, storage=storage, overrides=overrides, trials=trials, data=data)
    spec = _needs_file(target, study, "run")
    return _work_then_finalize(open_session(spec, create=True, log=log), worker=worker, log=log, on_trial=on_trial)


def _work_then_finalize(session: Session, *, worker: int, log: Callable[[str], None],
                        on_trial: OnTrial | None) -> WorkerReport:
    """Trials until the budget is met, then the waiting finalize jobs: workers share both kinds of work."""
    report = session.work(worker=worker, on_trial=on_trial)
    if not report.interrupted and not report.waiting_timing:
        try:
            run_finals(session.ctx, session.data, session.teacher, log=log)
        except KeyboardInterrupt:
            return replace(report, interrupted=True)
    return report


def work(
    study: StudyRef,
    *,
    trials: int | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
    data: str | None = None,
    worker: int = 0,
    log: Callable[[str], None] = lambda _: None,
    on_trial: OnTrial | None = None,
    timing_only: bool = False,
) -> WorkerReport:
    """Join an existing study as one worker (from any machine) and work until its budget is met.

    Like :func:`run`, but the study must exist: a worker never creates one. Both then take the
    study's waiting finalize jobs (:func:`finalize`) until none waits. ``worker`` seeds this
    worker's sampler, so workers of one study should use different ids. On a machine of the study's
    latency target, candidates waiting to be timed come first; ``timing_only``: this worker only times
    (refused on a machine of another class).
    """
    target = resolve(study, storage=storage, overrides=overrides, trials=trials, data=data)
    spec = _needs_file(target, study, "worker")
    if timing_only:
        # Refused before the data is read or the teacher loaded.
        target = connect(spec, create=False).target
        assert target is not None
        refuse_timing_only(target, spec.study.name)
        return open_session(spec, create=False, log=log).work(worker=worker, on_trial=on_trial, timing_only=True)
    session = open_session(spec, create=False, log=log)
    return _work_then_finalize(session, worker=worker, log=log, on_trial=on_trial)


def create(study: StudyRef, *, storage: str | None = None, overrides: Sequence[str] = (),
           data: str | None = None) -> None:
    """Create the study in its storage without working on it; a stored study must have the same config.

    The data is read and the teacher built untrained first, so bad input is refused before anything
    is written.
    """
    target = resolve(study, storage=storage, overrides=overrides, data=data)
    spec = _needs_file(target, study, "run")
    data_ = prepare(spec)
    checked = check_new_study(spec, data_)
    record_check(connect(spec, create=True), checked, data_)


def check(study: StudyRef, *, storage: str | None = None, overrides: Sequence[str] = (), data: str | None = None,
          progress: Callable[[str], None] | None = None) -> SpaceCheck:
    """Run a study file's compressibility check alone and write nothing: what it would take out of the space.

    The teacher (untrained, from the study's seed, or its checkpoint) has each prunable group pruned
    once, each layer quantized and materialized once, and each student knob choice built
    (``docs/check.md``). A study with nothing left to search is a SqueezeError, one sentence.
    ``progress(part)`` is called before each attempt.
    """
    target = resolve(study, storage=storage, overrides=overrides, data=data)
    spec = _needs_file(target, study, "check")
    return run_check(spec, prepare(spec), progress=progress)


def status(study: StudyRef, *, storage: str | None = None) -> Status:
    """Trials by state, retries, live workers, front size, hypervolume, sampler, teacher."""
    return study_status(resolve(study, storage=storage))


def front(study: StudyRef, *, storage: str | None = None) -> FrontData:
    """Every completed trial as a point, the feasible Pareto front, the teacher and the hypervolume history."""
    return front_of(resolve(study, storage=storage))


def plot(study: StudyRef, out_dir: str | os.PathLike[str], *, storage: str | None = None) -> list[Path]:
    """Draw the pairwise projections, a 3-D view and the hypervolume plots (PNG and SVG) into ``out_dir``."""
    return draw(front(study, storage=storage), out_dir)


def export(study: StudyRef, *, trial: int, out: str | os.PathLike[str], storage: str | None = None,
           final: bool = False, format: str | None = None) -> Path:
    """Write trial ``trial``'s artifact to the file ``out``: byte for byte the one that was measured.

    With ``final``, the trial's finished artifact (:func:`finalize`), the one to ship. Decoding
    checks the bytes first. A study that uses a user's model family needs its study file (not its
    name): nothing named in a database is imported. An ``onnxruntime`` study's artifacts are ONNX
    models; ``format`` (``"onnx"`` or ``"squeeze"``), when given, must be the one the study stored:
    ``"onnx"`` on a ``torch`` study is refused, not converted (a conversion is not what was measured).
    """
    return export_trial(resolve(study, storage=storage), trial, out, final=final, format=format)


def export_front(study: StudyRef, *, out_dir: str | os.PathLike[str], storage: str | None = None,
                 final: bool = False, format: str | None = None) -> list[Path]:
    """Write every front member's artifact into ``out_dir`` as ``trial-<N>.squeeze`` (``trial-<N>-final.squeeze``
    with ``final``: the finished ones, each of which must exist); ``trial-<N>.onnx`` for an ``onnxruntime``
    study. ``format`` as for :func:`export`."""
    return _export_front(resolve(study, storage=storage), out_dir, final=final, format=format)


def list_studies(storage: str | None = None) -> list[tuple[str, int, int]]:
    """(name, completed trials, all trials) of every study at ``storage`` (else ``$SQUEEZE_STORAGE``, else the default)."""
    url = st.resolve_url(storage) or DEFAULT_STORAGE
    parsed = st.parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).is_file():
        # Listing must not create an empty database where a path was mistyped.
        raise SqueezeError(f"there is no study database at {st.safe_url(url)!r}: `{parsed.database}` does not exist.")
    engine = st.engine_for(url)
    if "studies" not in sa.inspect(engine).get_table_names():
        # A database with no study in it: say so, without creating Optuna's tables in it.
        return []
    out = []
    for summary in optuna.get_all_study_summaries(storage=url, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        out.append((summary.study_name, done, summary.n_trials))
    return out


def run_workers(study: str | os.PathLike[str], *, workers: int, storage: str | None = None,
                overrides: Sequence[str] = (), trials: int | None = None, data: str | None = None) -> int:
    """Create or resume a study file's study, then run ``workers`` local worker processes on it until its budget is met.

    Several workers need a database server (PostgreSQL): SQLite takes one writer at a time. Returns the
    highest exit status of the worker processes (0 when all finished).
    """
    target = resolve(study, storage=storage, overrides=overrides, trials=trials, data=data)
    spec = _needs_file(target, study, "run")
    if st.is_sqlite(spec.study.storage):
        raise SqueezeError(
            "several workers need a database server: SQLite allows one writer at a time, so use "
            "`--storage postgresql+psycopg://...` (or $SQUEEZE_STORAGE) with --workers above 1."
        )
    create(spec)
    spec_path = os.fspath(study)
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "squeeze.search", "worker", spec_path, "--worker-id", str(i)]
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
