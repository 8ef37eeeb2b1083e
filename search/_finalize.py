"""From a front point to a finished model: finalize jobs, queued, claimed and run by any process of the study.

``squeeze finalize`` queues one job per chosen trial (``squeeze_finals``, see ``_finals_store.py``)
and works on them; ``squeeze worker`` and ``squeeze run`` take the waiting ones once the trial budget
is met, so many machines share the work. A job trains the trial's exact plan with the study's full
recipe (:func:`squeeze.objectives.finalize_plan`) and stores the finished artifact with its figures:
accuracy on the test split, which nothing in a search reads, beside the trial's proxy accuracy on the
validation split, and the teacher's own test accuracy to compare with.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from squeeze.objectives import TaskData, accuracy_on_test, finalize_plan
from squeeze.spaces import CompressionPlan, SqueezeError, get_family

from . import _finals_store as fs
from . import _storage as st
from ._attrs import TrialAttr
from ._context import Context, connect, quiet_optuna
from ._front import front_of
from ._session import prepare
from ._spec import StudySpec
from ._target import StudyRef, Target, open_study, resolve
from ._teacher import TeacherBundle, ensure_teacher

Progress = Callable[[int, str, int, int], None]
"""``progress(trial, stage, step, steps)``: a finalize job's training, step by step."""


@dataclass(frozen=True)
class Finished:
    """A finished model's figures, beside its trial's proxy: what ``squeeze pareto`` shows and ``finalize`` returns."""

    trial: int
    epochs: int
    accuracy: float
    """On the test split."""
    proxy_accuracy: float
    """The trial's, on the validation split."""
    teacher_accuracy: float
    """The teacher's, on the test split."""
    size_bytes: int
    latency_ratio: float
    latency_ms: float
    sha256: str
    attempts: int
    """Claims the job took: 1, or more where a finalizer was killed and another took over."""


def _finished(row: fs.FinalRow) -> Finished:
    return Finished(trial=row.trial, epochs=row.epochs, accuracy=row.accuracy, proxy_accuracy=row.proxy_accuracy,
                    teacher_accuracy=row.teacher_accuracy, size_bytes=row.size_bytes, latency_ratio=row.latency_ratio,
                    latency_ms=row.latency_ms, sha256=row.sha256, attempts=row.attempts)


def finalize(
    study: StudyRef,
    *,
    trials: Sequence[int] = (),
    front: bool = False,
    epochs: int | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
    data: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    progress: Progress | None = None,
) -> list[Finished]:
    """Train the plans of ``trials`` (or of every front member, with ``front``) to the end; returns their figures.

    Each plan is trained with the study's full recipe (``[finalize]``; ``epochs`` overrides
    ``finalize.epochs``) and measured on the test split; the finished artifact is stored beside the
    trial's proxy. Jobs that other processes run are waited for; a trial already finished is not
    trained again. Needs the study file (the data and the teacher are read). Bad input (no such
    trial, a trial not COMPLETE, both or neither of ``trials`` and ``front``) is refused before
    anything is written.
    """
    if bool(trials) == bool(front):
        raise SqueezeError("`squeeze finalize` takes --trial N (one or more) or --front, not both and not neither.")
    target = resolve(study, storage=storage, overrides=overrides, data=data)
    if target.spec is None:
        raise SqueezeError(f"`squeeze finalize` needs the study file (*.toml), but got {os.fspath(study)!r}.")
    spec = target.spec
    job_epochs = spec.finalize.epochs if epochs is None else _epochs(epochs)
    proxies = _chosen(target, trials=trials, front=front)
    task = prepare(spec)
    ctx = connect(spec, create=False)
    teacher = ensure_teacher(ctx, task, log=log)
    with st.study_lock(ctx.engine, spec.study.name):
        fs.queue_finals(ctx.engine, spec.study.name, proxies, epochs=job_epochs)
    run_finals(ctx, task, teacher, only=set(proxies), log=log, progress=progress)
    rows = {row.trial: row for row in fs.finals(ctx.engine, spec.study.name)}
    failed = [n for n in proxies if rows[n].state == fs.FAILED]
    if failed:
        raise SqueezeError(f"finalizing trial {failed[0]} of study {spec.study.name!r} failed: {rows[failed[0]].error}; "
                           f"run the same command to try again.")
    return [_finished(rows[n]) for n in sorted(proxies)]


def _epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
        raise SqueezeError(f"`--epochs` must be a whole number of epochs from 1 to 10000, but got {epochs!r}.")
    return epochs


def _chosen(target: Target, *, trials: Sequence[int], front: bool) -> dict[int, float]:
    """The chosen trials and their proxy (validation) accuracy; each must be a COMPLETE trial of the study."""
    if front:
        members = {p.number: p.accuracy for p in front_of(target).front}
        if not members:
            raise SqueezeError(f"study {target.name!r} has no feasible front to finalize yet; run it first.")
        return members
    study, _ = open_study(target)
    known = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = {}
    for number in trials:
        trial = known.get(number)
        if trial is None:
            held = f"it has trials 0 to {len(known) - 1}" if known else "it has no trials yet"
            raise SqueezeError(f"trial {number} does not exist in study {target.name!r} ({held}).")
        if trial.state != TrialState.COMPLETE:
            raise SqueezeError(
                f"trial {number} of study {target.name!r} is {trial.state.name}; only COMPLETE trials can be finalized.")
        out[number] = float(trial.values[0])
    return out


def finished(study: StudyRef, *, storage: str | None = None) -> dict[int, Finished]:
    """The study's finished models by trial number (empty when none was finalized)."""
    target = resolve(study, storage=storage)
    _, engine = open_study(target)
    return {row.trial: _finished(row) for row in fs.finals(engine, target.name) if row.state == fs.DONE}


def final_artifact(target: Target, number: int) -> bytes:
    """The finished artifact of trial ``number``; a SqueezeError saying how to make it when there is none."""
    _, engine = open_study(target)
    row = fs.get_final(engine, target.name, number)
    if row is None or row.state != fs.DONE or row.artifact is None:
        state = "is not finished yet" if row is not None else "was never finalized"
        raise SqueezeError(f"trial {number} of study {target.name!r} {state}; "
                           f"run `squeeze finalize STUDY.toml --trial {number}` first.")
    return row.artifact


def run_finals(ctx: Context, data: TaskData, teacher: TeacherBundle, *, only: Collection[int] | None = None,
               log: Callable[[str], None] = lambda _: None, progress: Progress | None = None,
               poll_s: float = 1.0) -> int:
    """Claim and run the study's finalize jobs until none is left to this process; returns the jobs it finished.

    With ``only`` (``squeeze finalize``), the jobs of those trials, waiting for the ones that other
    processes run (and taking over any whose finalizer went silent); without (a worker), every
    waiting job, returning once none waits. SIGINT or SIGTERM gives the running job back, so the
    next process takes it at once, and stops.
    """
    spec = ctx.spec
    name = spec.study.name
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:128]
    done = 0
    with _sigterm_interrupts():
        while True:
            with st.study_lock(ctx.engine, name):
                job = fs.claim_final(ctx.engine, name, owner, grace_s=spec.study.grace_s, only=only)
            if job is None:
                if only is None or not _pending(ctx, only):
                    return done
                time.sleep(poll_s)  # the rest run elsewhere; a stale one is taken over on a later claim
                continue
            if job.attempts > 1:
                log(f"trial {job.trial}: taking over a finalize job whose finalizer stopped (attempt {job.attempts})")
            done += _run_job(ctx, data, teacher, job, owner=owner, log=log, progress=progress)


def _pending(ctx: Context, only: Collection[int]) -> bool:
    return any(row.state in (fs.WAITING, fs.RUNNING) for row in fs.finals(ctx.engine, ctx.spec.study.name)
               if row.trial in only)


def _run_job(ctx: Context, data: TaskData, teacher: TeacherBundle, job: fs.FinalRow, *, owner: str,
             log: Callable[[str], None], progress: Progress | None) -> int:
    """Train, measure and store one claimed job under a heartbeat; returns 1 when this process stored it."""
    spec: StudySpec = ctx.spec
    name = spec.study.name
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(ctx, job.trial, owner, stop), daemon=True, name="squeeze-finalize-beat")
    beat.start()
    try:
        log(f"trial {job.trial}: finalizing with {job.epochs} epochs")
        with quiet_optuna():
            study = optuna.load_study(study_name=name, storage=ctx.storage)
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == job.trial)
        plan = CompressionPlan.from_dict(trial.user_attrs[TrialAttr.PLAN])
        judged = finalize_plan(
            plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=get_family(spec.task.family),
            options=spec.task.model, data=data, budget=spec.training, compress=spec.compress, latency=spec.latency,
            seed=spec.training_seed(), final=spec.finalize, epochs=job.epochs, device=spec.task.device,
            card={"study": name, "trial": job.trial},
            progress=(lambda stage, i, n: progress(job.trial, stage, i, n)) if progress else None,
        )
        stored = fs.finish_final(
            ctx.engine, name, job.trial, owner, artifact=judged.artifact, sha256=judged.sha256, accuracy=judged.accuracy,
            teacher_accuracy=accuracy_on_test(teacher.deployed, data), size_bytes=judged.size_bytes,
            latency_ratio=judged.latency.ratio, latency_ms=judged.latency.candidate_ms,
        )
    except Exception as exc:  # noqa: BLE001 - one failing job fails alone, with its reason kept
        fs.fail_final(ctx.engine, name, job.trial, owner, error=f"{type(exc).__name__}: {exc}")
        log(f"trial {job.trial}: finalizing failed: {type(exc).__name__}: {exc}")
        return 0
    except BaseException:
        fs.release_final(ctx.engine, name, job.trial, owner)
        raise
    finally:
        stop.set()
    if not stored:
        # It went silent past the grace period and another process took it over: that one stores it.
        log(f"trial {job.trial}: another process took this job over; its result stands, this one is dropped")
        return 0
    log(f"trial {job.trial}: finished, test accuracy {judged.accuracy:.4f} (proxy {job.proxy_accuracy:.4f}), "
        f"{judged.size_bytes / 1024:.1f} KB, latency x{judged.latency.ratio:.2f}")
    return 1


def _beat(ctx: Context, trial: int, owner: str, stop: threading.Event) -> None:
    while not stop.wait(ctx.spec.study.heartbeat_s):
        try:
            fs.beat_final(ctx.engine, ctx.spec.study.name, trial, owner)
        except Exception:  # noqa: BLE001 - a missed beat only risks a takeover after the grace period
            pass


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the duration, so a job is given back on either signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
