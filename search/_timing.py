"""A study's latency target, and the workers of that target timing the candidates that wait for it.

A latency ratio belongs to the CPU it was measured on (int8 kernels pay on some instruction sets and
not on others), so a study has one **latency target**: a CPU class (:func:`squeeze.objectives.cpu_class`:
the model name and the int8 features, or ``$SQUEEZE_CPU_CLASS``), with the study's runtime, threads and
batch. It is fixed when the study is created, from ``[latency] target`` or else from the creating
machine, and kept as the study attribute ``latency_target``.

Any worker trains, compresses and stores candidates; only a worker of the target class times them.
A candidate's trial stays RUNNING until it is timed (so the exact global budget counts it), with a job
in ``squeeze_timings`` (``_timing_store.py``); a worker of the target class times waiting candidates
before it trains new ones, a network at a time, claimed with an owner and a heartbeat, so a candidate
whose timing worker dies is timed by the next one. A network is measured once per study
(``squeeze_latencies``) and every candidate of it takes that measurement.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from squeeze.objectives import cpu_class
from squeeze.spaces import SqueezeError

from . import _storage as st
from . import _timing_store as ts
from ._attrs import StudyAttr, TrialAttr

if TYPE_CHECKING:
    from ._context import Context


@dataclass(frozen=True)
class LatencyTarget:
    """Where a study's candidates are timed: a CPU class, and the runtime, threads and batch of the protocol."""

    cpu_class: str
    runtime: str
    threads: int
    batch: int

    def describe(self) -> str:
        return f"{self.cpu_class}, {self.runtime}, {self.threads} thread(s), batch {self.batch}"

    def here(self) -> bool:
        """Whether this machine is of the target class."""
        return cpu_class() == self.cpu_class


def stored_target(attrs: dict[str, Any]) -> LatencyTarget | None:
    """The target kept in a study's user attributes (None: a study stored before targets)."""
    found = attrs.get(StudyAttr.LATENCY_TARGET)
    return LatencyTarget(**found) if isinstance(found, dict) else None


def ensure_target(ctx: Context) -> LatencyTarget:
    """The study's latency target, fixed now if it has none (from ``latency.target``, else this machine).

    A study file that names another target than the stored one is refused: the target is fixed
    when the study is created, since ratios from two classes do not compare.
    """
    spec = ctx.spec
    found = stored_target(ctx.study.user_attrs)
    if found is None:
        with st.study_lock(ctx.engine, spec.study.name):
            ctx.study = optuna.load_study(study_name=spec.study.name, storage=ctx.storage)
            found = stored_target(ctx.study.user_attrs)
            if found is None:
                found = LatencyTarget(cpu_class=spec.latency.target or cpu_class(), runtime=spec.latency.runtime,
                                      threads=spec.latency.threads, batch=spec.latency.batch)
                ctx.study.set_user_attr(StudyAttr.LATENCY_TARGET, asdict(found))
    if spec.latency.target is not None and spec.latency.target != found.cpu_class:
        raise SqueezeError(
            f"`latency.target` is {spec.latency.target!r} in the file, but study {spec.study.name!r} is timed on "
            f"{found.cpu_class!r} (fixed when it was created); leave the key out, or use a new study name."
        )
    return found


def record_baseline(study: optuna.Study, target: LatencyTarget, teacher_ms: float) -> None:
    """Keep the teacher's quiet time on the target, which each measurement's teacher is compared with."""
    study.set_user_attr(StudyAttr.LATENCY_BASELINE, {"cpu_class": target.cpu_class, "teacher_ms": teacher_ms})


def baseline_of(study: optuna.Study, target: LatencyTarget) -> float | None:
    found = study.user_attrs.get(StudyAttr.LATENCY_BASELINE)
    if isinstance(found, dict) and found.get("cpu_class") == target.cpu_class:
        return float(found["teacher_ms"])
    return None


def ensure_baseline(study: optuna.Study, target: LatencyTarget, hooks: TimingHooks) -> float:
    """The teacher's quiet time on the target, measured now if no worker of the target has yet."""
    found = baseline_of(study, target)
    if found is None:
        found = hooks.baseline()
        record_baseline(study, target, found)
    return found


@dataclass
class TimingHooks:
    """What timing needs from the objective: the domain half of the job.

    ``measure(trial, baseline_ms)`` times the candidate stored for ``trial`` against the teacher on this
    machine and returns the measurement (:class:`squeeze.objectives.Latency`'s fields);
    ``complete(trial, latency, from_trial)`` records a measurement on a waiting trial (its own, or that
    of ``from_trial``'s candidate of the same network) and returns the trial's three values;
    ``baseline()`` times the teacher alone and returns its milliseconds a call.
    """

    measure: Callable[[FrozenTrial, float | None], dict[str, Any]]
    complete: Callable[[optuna.Trial, dict[str, Any], int | None], tuple[float, float, float]]
    baseline: Callable[[], float]


class Timer:
    """A worker's timing half: it times waiting candidates when the worker is of the study's target class."""

    def __init__(self, ctx: Context, hooks: TimingHooks, *, target: LatencyTarget) -> None:
        self._ctx = ctx
        self._hooks = hooks
        self.target = target
        self.on_target = target.here()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def time_next(self, study: optuna.Study) -> list[FrozenTrial]:
        """Time the next waiting network (every candidate of it); returns the trials finished (none: nothing waits)."""
        ctx, name = self._ctx, self._ctx.spec.study.name
        if not self.on_target:
            return []
        with st.study_lock(ctx.engine, name):
            rows = ts.claim_timing(ctx.engine, name, self._owner, grace_s=ctx.spec.study.grace_s)
        if not rows:
            return []
        key = rows[0].key
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(key, stop), name="squeeze-timing-beat", daemon=True)
        beat.start()
        storage = study._storage
        finished: list[FrozenTrial] = []
        try:
            found = ts.measured(ctx.engine, name, key)
            if found is None:
                first = storage.get_trial(rows[0].trial_id)
                try:
                    latency = self._hooks.measure(first, self._baseline(study))
                except Exception as exc:  # noqa: BLE001 - a candidate that cannot be timed fails alone
                    error = f"timing failed: {type(exc).__name__}: {exc}"[:2000]
                    for row in rows:
                        finished += self._fail(study, row, error)
                    return finished
                found = ts.store_measured(ctx.engine, name, key, trial=rows[0].trial, latency=latency)
            measured_in, latency = found
            for row in rows:
                frozen = storage.get_trial(row.trial_id)
                if frozen.state != TrialState.RUNNING:
                    ts.end_timing(ctx.engine, name, row.trial, self._owner)  # finished meanwhile (failed as stale)
                    continue
                if not ts.beat_timing(ctx.engine, name, key, self._owner):
                    break  # the claim went stale and another worker took it over
                trial = optuna.Trial(study, row.trial_id)
                try:
                    values = self._hooks.complete(trial, dict(latency), None if measured_in == row.trial else measured_in)
                    trial.set_user_attr(TrialAttr.TIMED_BY, socket.gethostname())
                    done = study.tell(row.trial, list(values), skip_if_finished=True)
                except UpdateFinishedTrialError:
                    continue
                except Exception as exc:  # noqa: BLE001 - as above
                    finished += self._fail(study, row, f"timing failed: {type(exc).__name__}: {exc}"[:2000])
                    continue
                ts.end_timing(ctx.engine, name, row.trial, self._owner)
                finished.append(done)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM): the jobs go back at once rather than after the grace period.
            try:
                ts.release_timing(ctx.engine, name, key, self._owner)
            except Exception:  # noqa: BLE001 - they then go stale after grace_s, as if killed
                pass
            raise
        finally:
            stop.set()
        return finished

    def _fail(self, study: optuna.Study, row: ts.TimingRow, error: str) -> list[FrozenTrial]:
        ts.end_timing(self._ctx.engine, self._ctx.spec.study.name, row.trial, self._owner, error=error)
        try:
            study._storage.set_trial_user_attr(row.trial_id, TrialAttr.ERROR, error)
            return [study.tell(row.trial, state=TrialState.FAIL, skip_if_finished=True)]
        except UpdateFinishedTrialError:
            return []

    def _baseline(self, study: optuna.Study) -> float:
        return ensure_baseline(study, self.target, self._hooks)

    def _beat(self, key: str, stop: threading.Event) -> None:
        ctx = self._ctx
        while not stop.wait(ctx.spec.study.heartbeat_s):
            try:
                ts.beat_timing(ctx.engine, ctx.spec.study.name, key, self._owner)
            except Exception:  # noqa: BLE001 - a missed beat only risks another worker taking over
                pass


def refuse_timing_only(target: LatencyTarget, name: str) -> None:
    """A worker asked only to time, on a machine outside the target class: one sentence."""
    if not target.here():
        raise SqueezeError(
            f"this machine's CPU class is {cpu_class()!r}, but study {name!r} is timed on {target.cpu_class!r}; "
            f"run `--timing-only` workers on a machine of that class (or set $SQUEEZE_CPU_CLASS where it is one)."
        )

