"""Search workers: an exact global budget, heartbeats, stale-trial retry and clean stops.

A worker is one process that points at the study's storage. Many may share a study, on many
machines; the database is the only thing they share. The rules they follow:

- **Budget.** A trial starts only while ``completed + running < budget``, checked and claimed
  under a per-study lock (:func:`squeeze.search._storage.study_lock`), so the study ends with exactly
  the budget of completed trials however many workers run. Optuna's ``MaxTrialsCallback`` counts
  without a lock and can overshoot.
- **Heartbeats.** One thread per worker records, every ``study.heartbeat_s`` seconds, the running
  trial's heartbeat (Optuna's ``trial_heartbeats``) and the worker's own row (``squeeze_workers``,
  which ``squeeze status`` reads).
- **Stale trials.** Under the same lock, and before a worker takes its first trial, running trials
  silent for over ``study.grace_s`` seconds are failed and retried once
  (``RetryHeartbeatStaleTrialCallback(max_retry=1)`` puts a WAITING copy in the queue, which the
  next ``ask`` takes first).
- **A retry runs the same plan.** The retry copies the parameters stored for the failed trial, and a
  worker holds a trial's writes in memory (``_batched.py``), so they must reach the database before
  the worker can die with them: the claim (with its first heartbeat, and what the sampler recorded)
  is written before the study lock is released, and the objective calls :func:`write_params` as soon
  as it has suggested its parameters, before it trains anything.
- **Errors.** A trial that raises is recorded FAIL with the error in its ``error`` attribute, and the
  worker goes on; only a run of failures in a row stops it (the objective is broken, not a plan).
- **Early stops.** A trial that raises ``optuna.TrialPruned`` (a budget it cannot meet) is recorded
  PRUNED with its reasons as attributes; it does not count against the budget, nor as a failure.
- **Signals.** SIGINT or SIGTERM: no new trial starts; the running one is failed as interrupted
  (and queued for one retry, since nothing was wrong with its parameters); the worker returns.
- **Timing on the target.** An objective that raises :class:`AwaitTiming` has trained and stored its
  candidate but leaves its latency to a worker of the study's target class (``_timing.py``): the trial
  stays RUNNING, without heartbeats, with a job in ``squeeze_timings``, and is never failed as stale
  while the job waits. A worker of the target class times waiting candidates before it asks for a new
  trial; a worker of another class whose every remaining trial waits for timing stops, saying so.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from squeeze.spaces import SqueezeError

from . import _storage as st
from . import _worker_store as ws
from . import _timing_store as ts
from ._batched import BatchedStorage
from ._heartbeat import Heartbeat
from ._attrs import TrialAttr

if TYPE_CHECKING:
    from ._context import Context
    from ._timing import Timer

MAX_FAILURES_IN_A_ROW = 10
"""A worker whose trials fail this many times in a row stops: the objective, not a plan, is broken."""

MAX_STOPPED_IN_A_ROW = 200
"""A worker whose trials all stop early this many times in a row stops: the budgets exclude the space."""

Objective = Callable[[optuna.Trial], tuple[tuple[float, float, float], dict[str, Any]]]
"""A trial function: returns the three values and the attributes to record."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while a trial was running.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that an objective's own
    ``except Exception`` cannot swallow the stop.
    """


class AwaitTiming(Exception):
    """Raised by an objective whose candidate is trained and stored, to be timed on the study's target.

    ``key`` is the network's latency key (candidates of one network share one measurement) and
    ``attrs`` the trial attributes known so far (accuracy, plan, artifact digest...).
    """

    def __init__(self, key: str, attrs: dict[str, Any]) -> None:
        super().__init__(f"waits to be timed on the study's latency target (network {key})")
        self.key = key
        self.attrs = attrs


@dataclass
class WorkerReport:
    completed: int
    failed: int
    budget_completed: int
    interrupted: bool
    waiting_timing: int = 0
    """Candidates left waiting to be timed on the study's target when this worker stopped."""


def worker_seed(seed: int, worker: int) -> int:
    """Each worker samples with its own seed, derived from the study's seed and the worker id."""
    return seed * 1_000_003 + worker * 7_919


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """A stale or interrupted trial is retried once, by whichever worker asks next."""
    return RetryHeartbeatStaleTrialCallback(max_retry=1)


def write_params(trial: optuna.Trial) -> None:
    """Write the trial's parameters (and anything else held for it) to the database now.

    An objective calls it once it has suggested its parameters, before the long part of the trial.
    Without it they wait in memory for the next heartbeat, and a worker killed before then leaves a
    running trial without parameters, whose retry would then sample a different plan.
    """
    storage = trial.storage
    if isinstance(storage, BatchedStorage):
        storage.flush(trial._trial_id)


def state_counts(ctx: Context) -> dict[str, int]:
    """Trials by state, counted in the database (one indexed query, cheap at any study size)."""
    return st.trial_state_counts(ctx.engine, ctx.study._study_id)


def fail_stale_trials(ctx: Context, study: optuna.Study) -> list[int]:
    """Fail the study's running trials whose worker went silent; queue each for one retry.

    Call it under the study lock, so that two workers never fail (and retry) the same trial.
    A trial counts as stale when its last heartbeat, or its start if it never beat (its worker
    died between claiming it and the first beat), is older than ``study.grace_s``.
    Returns the numbers of the trials failed.
    """
    grace = ctx.spec.study.grace_s
    storage = ctx.storage
    failed = []
    waiting = ts.pending_trials(ctx.engine, ctx.spec.study.name)  # their timing jobs have heartbeats of their own
    for trial_id, number in st.stale_trials(ctx.engine, study._study_id, grace_s=grace):
        if number in waiting:
            continue
        try:
            storage.set_trial_user_attr(
                trial_id, TrialAttr.ERROR, f"its worker stopped heart-beating for over {grace} s (killed or cut off)"
            )
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # its worker finished it after all
        failed.append(number)
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed


def work_loop(
    ctx: Context,
    objective: Objective,
    *,
    sampler: optuna.samplers.BaseSampler,
    worker: int = 0,
    on_trial: Callable[[dict[str, int], FrozenTrial | None], None] | None = None,
    poll_s: float = 1.0,
    handle_signals: bool = True,
    timer: Timer | None = None,
    timing_only: bool = False,
) -> WorkerReport:
    """Run trials until the study holds ``spec.study.trials`` completed ones, or a signal arrives.

    ``on_trial(counts, frozen)`` is called after every trial this worker ran or timed. ``timer`` times
    waiting candidates when this machine is of the study's target class; ``timing_only``: this worker
    only times, and never asks for a trial. See the module docstring for the rules; this is the loop
    that applies them.
    """
    spec = ctx.spec
    name = spec.study.name
    budget = spec.study.trials
    batched = BatchedStorage(ctx.storage)
    study = optuna.load_study(study_name=name, storage=batched, sampler=sampler)
    flags = _Flags()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        # Plain attributes only: a handler that took a lock (an Event's) could deadlock the thread it interrupted.
        flags.stop = True
        if flags.in_trial:
            flags.in_trial = False
            raise Interrupted(signal.Signals(signum).name)

    with st.study_lock(ctx.engine, name):
        worker_id = ws.register_worker(ctx.engine, name, worker=worker, sole=st.is_sqlite(ctx.url),
                                       within_s=spec.study.grace_s)
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    completed = failed = in_a_row = stopped_in_a_row = 0
    waiting_timing = 0
    last_sweep = float("-inf")  # the first claim sweeps: stale trials fail before new ones begin

    def queue(trial: optuna.Trial, key: str) -> None:
        ts.queue_timing(ctx.engine, name, trial=trial.number, trial_id=trial._trial_id, key=key)

    try:
        with Heartbeat(ctx, worker_id, batched) as beat:
            while not flags.stop:
                if timer is not None and timer.on_target:
                    # Candidates waiting for the target come before new ones.
                    timed = timer.time_next(study)
                    for frozen in timed:
                        done = frozen.state == TrialState.COMPLETE
                        completed += done
                        failed += not done
                        beat.completed += done
                        beat.failed += not done
                        if on_trial:
                            on_trial(state_counts(ctx), frozen)
                    if timed:
                        continue
                if timing_only:
                    if state_counts(ctx)["COMPLETE"] >= budget:
                        break
                    _sleep(poll_s, flags)
                    continue
                trial = None
                with st.study_lock(ctx.engine, name):
                    if time.monotonic() - last_sweep >= spec.study.heartbeat_s:
                        fail_stale_trials(ctx, study)
                        last_sweep = time.monotonic()
                    counts = state_counts(ctx)
                    if counts["COMPLETE"] >= budget:
                        break
                    if counts["COMPLETE"] + counts["RUNNING"] < budget:
                        if not counts["WAITING"]:
                            batched.skip_next_waiting_check()
                        trial = study.ask()
                        beat.start_trial(trial)
                if trial is None:
                    if timer is not None and not timer.on_target:
                        pending = len(ts.pending_trials(ctx.engine, name))
                        if pending and pending >= counts["RUNNING"]:
                            # All that is left waits for a machine of the target class: nothing here can help.
                            waiting_timing = pending
                            break
                    # The rest of the budget is running elsewhere; wait in case one of them fails.
                    _sleep(poll_s, flags)
                    continue
                frozen = _run_one(study, trial, objective, flags, queue=queue)
                done = frozen.state == TrialState.COMPLETE
                pruned = frozen.state == TrialState.PRUNED
                waits = frozen.state == TrialState.RUNNING  # trained, and waiting to be timed on the target
                beat.end_trial(frozen.state)
                completed += done
                failed += not (done or pruned or waits)
                in_a_row = 0 if done or pruned or waits else in_a_row + 1
                stopped_in_a_row = stopped_in_a_row + 1 if pruned else 0
                if on_trial:
                    on_trial(state_counts(ctx), frozen)
                if in_a_row >= MAX_FAILURES_IN_A_ROW and not flags.stop:
                    error = frozen.user_attrs.get(TrialAttr.ERROR, "?")
                    raise SqueezeError(
                        f"{in_a_row} trials in a row failed in this worker (the last: {error}); "
                        f"fix the objective and run the same command again to resume study {name!r}."
                    )
                if stopped_in_a_row >= MAX_STOPPED_IN_A_ROW and not flags.stop:
                    raise SqueezeError(
                        f"{stopped_in_a_row} trials in a row stopped early in this worker (the last: "
                        f"{frozen.user_attrs.get(TrialAttr.STOPPED_EARLY, '?')}): the study's budgets leave almost nothing "
                        f"of its space; relax `objectives.max_size_kb` or `objectives.min_accuracy`, or widen `[space]`."
                    )
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    counts = state_counts(ctx)
    return WorkerReport(completed=completed, failed=failed, budget_completed=counts["COMPLETE"],
                        interrupted=flags.stop, waiting_timing=waiting_timing)


class _Flags:
    """What the signal handler and the worker loop share: plain attributes, safe in a handler."""

    stop = False
    in_trial = False


def _sleep(seconds: float, flags: _Flags) -> None:
    end = time.monotonic() + seconds
    while not flags.stop and time.monotonic() < end:
        time.sleep(min(0.1, seconds))


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective, flags: _Flags,
             queue: Callable[[optuna.Trial, str], None] | None = None) -> FrozenTrial:
    """Run and record one trial; returns it as stored (RUNNING when it waits to be timed, queued by ``queue``)."""
    started = time.perf_counter()
    values: tuple[float, float, float] | None = None
    attrs: dict[str, Any] = {}
    error: str | None = None
    stopped: dict[str, Any] | None = None
    waits: AwaitTiming | None = None
    interrupted = False
    try:
        try:
            flags.in_trial = True
            if flags.stop:
                raise Interrupted("stop requested")
            values, attrs = objective(trial)
        finally:
            flags.in_trial = False  # a signal landing here still raises inside the outer try
    except Interrupted as exc:
        interrupted = True
        error = f"interrupted ({exc}): the worker was stopped during the trial"
    except AwaitTiming as exc:
        waits = exc
    except optuna.TrialPruned as exc:
        # Stopped early: it could not meet a budget (see ``_early.py``); recorded PRUNED, with why.
        stopped = {TrialAttr.STOPPED_EARLY: str(exc) or "stopped", **getattr(exc, "attrs", {})}
    except Exception as exc:  # noqa: BLE001 - a failing trial fails alone; the study goes on
        error = f"{type(exc).__name__}: {exc}"[:2000]
    if waits is not None and queue is not None:
        for key, value in waits.attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(TrialAttr.TRIAL_S, round(time.perf_counter() - started, 3))
        try:
            # Its attributes reach the database before the job that lets a worker of the target read them.
            if isinstance(study._storage, BatchedStorage):
                study._storage.flush(trial._trial_id)
            queue(trial, waits.key)
            return study._storage.get_trial(trial._trial_id)
        except Exception as exc:  # noqa: BLE001 - then it fails like any trial that raises
            error = f"could not leave the candidate waiting for timing: {type(exc).__name__}: {exc}"[:2000]
    elif waits is not None:
        error = "the objective left its candidate to be timed, but this loop has no timing queue"
    try:
        for key, value in (stopped or attrs if error is None else {TrialAttr.ERROR: error}).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(TrialAttr.TRIAL_S, round(time.perf_counter() - started, 3))
        if stopped is not None:
            frozen = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        elif error is None:
            frozen = study.tell(trial, list(values), skip_if_finished=True)
        else:
            frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except UpdateFinishedTrialError:
        # Another worker failed this trial as stale while it ran (this one missed its heartbeats);
        # that trial's retry stands in for it, so this result is dropped.
        study._storage.drop(trial._trial_id)
        frozen = study._storage.get_trial(trial._trial_id)
    if interrupted and frozen.state == TrialState.FAIL and "failed_trial" not in frozen.system_attrs:
        retry_callback()(study, copy.deepcopy(frozen))
    return frozen
