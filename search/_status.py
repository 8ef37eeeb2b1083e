"""What ``squeeze status`` shows: trials by state, workers, the front, the sampler and its moves, the teacher."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import sqlalchemy as sa
from optuna.trial import TrialState

from . import _storage as st
from . import _worker_store as ws
from ._attrs import TrialAttr
from ._check import narrowing_of, stored_check
from ._context import GRACE_S
from ._pareto import Teacher, hypervolume, pareto_front, references_beaten
from ._readers import points, teacher_of
from . import _timing_store as ts
from ._target import Target, open_study
from ._timing import stored_target


@dataclass(frozen=True)
class Status:
    """A study's state, as :func:`squeeze.search.status` returns it."""

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
    references_beaten: tuple[tuple[int, int | None], ...] = ()
    """Each completed uniform reference's trial, with the smallest front trial that dominates it (None: none does)."""
    runtime: str | None = None
    """Where the study's artifacts run and were measured: ``torch`` (SQZ1 files) or ``onnxruntime`` (ONNX models)."""
    taken_out: tuple[str, ...] = ()
    """What the study's check and its failed trials took out of the space, one line each (part, step, message)."""
    searched: tuple[str, ...] = ()
    """What the check left to search (empty for a study stored before checks)."""
    latency_target: str | None = None
    """Where candidates are timed: CPU class, runtime, threads, batch (None: a study stored before targets)."""
    waiting_timing: int = 0
    """Trained candidates waiting to be timed (or being timed) on the target; their trials count as running."""
    timed_elsewhere: int = 0
    """Completed trials whose latency was not measured on the target class (studies stored before targets)."""
    unsettled: int = 0
    """Completed trials whose measurement never settled (load on the target machine in every attempt)."""


def study_status(target: Target) -> Status:
    """Trials by state, retries, live workers (recent heartbeats), front size and hypervolume."""
    study, engine = open_study(target)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    retries = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    grace = target.spec.study.grace_s if target.spec else GRACE_S
    live = len(ws.live_workers(engine, target.name, within_s=grace))
    teacher = teacher_of(study)
    pts = points(study)
    front = pareto_front(pts)
    hv = hypervolume(pts, teacher=teacher) if teacher and pts else None
    stored = st.load_config(engine, target.name) if "squeeze_studies" in sa.inspect(engine).get_table_names() else None
    budget = target.spec.study.trials if target.spec else (stored or {}).get("study", {}).get("trials")
    errors = [(t.number, str(t.user_attrs.get(TrialAttr.ERROR, ""))) for t in trials if t.state == TrialState.FAIL][-5:]
    recent = [t for t in trials if t.state.is_finished() and TrialAttr.SAMPLER_MS in t.user_attrs][-10:]
    timed = [t.user_attrs[TrialAttr.TRIAL_S] for t in recent if TrialAttr.TRIAL_S in t.user_attrs]
    stopped = [t for t in trials if t.state == TrialState.PRUNED and TrialAttr.STOPPED_EARLY in t.user_attrs]
    measured = [t for t in trials if t.state == TrialState.COMPLETE and TrialAttr.LATENCY_REUSED in t.user_attrs]
    reused = sum(1 for t in measured if t.user_attrs[TrialAttr.LATENCY_REUSED])
    # The stored config is what the study ran with; one stored before runtimes existed ran in torch.
    latency = (stored or {}).get("latency")
    runtime = (latency.get("runtime", "torch") if isinstance(latency, dict)
               else target.spec.latency.runtime if target.spec else None)
    check = stored_check(study)
    timed_on = stored_target(study.user_attrs)
    complete = [t.user_attrs.get(TrialAttr.LATENCY) for t in trials if t.state == TrialState.COMPLETE]
    complete = [lat if isinstance(lat, dict) else {} for lat in complete]
    return Status(
        target.name, st.safe_url(target.url), counts, budget, retries, live, len(front), hv, teacher, errors,
        runtime=runtime,
        latency_target=timed_on.describe() if timed_on else None,
        waiting_timing=len(ts.pending_trials(engine, study.study_name)),
        timed_elsewhere=sum(1 for lat in complete if timed_on is None or lat.get("cpu_class") != timed_on.cpu_class),
        unsettled=sum(1 for lat in complete if lat.get("settled") is False),
        taken_out=tuple(r.describe() for r in narrowing_of(study.user_attrs).removals),
        searched=check.searched if check else (),
        sampler=recent[-1].user_attrs.get(TrialAttr.SAMPLER) if recent else None,
        sampler_ms=statistics.median(t.user_attrs[TrialAttr.SAMPLER_MS] for t in recent) if recent else None,
        trial_s=statistics.median(timed) if timed else None,
        stopped_early=len(stopped), saved_s=sum(float(t.user_attrs.get(TrialAttr.SAVED_S, 0.0)) for t in stopped),
        latency_timed=len(measured) - reused, latency_reused=reused,
        references_beaten=tuple((ref.number, by.number if by else None) for ref, by in references_beaten(pts)),
    )
