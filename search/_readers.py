"""Reading a study back: its completed trials as points, and the teacher's stored figures."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from ._attrs import StudyAttr, TrialAttr
from ._pareto import Point, Teacher


def points(study: optuna.Study, *, teacher: Teacher | None = None) -> list[Point]:
    """Every completed trial as a :class:`Point`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    start = min((t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start), default=None)
    out = []
    for t in trials:
        plan = t.user_attrs.get(TrialAttr.PLAN, {})
        bits = list(plan.get("bits", {}).values())
        sparsity = list(plan.get("sparsity", {}).values())
        student = plan.get("student", {})
        out.append(Point(
            number=t.number,
            accuracy=float(t.values[0]),
            size_bytes=int(t.values[1]),
            latency_ratio=float(t.values[2]),
            latency_ms=(t.user_attrs.get(TrialAttr.LATENCY) or {}).get("candidate_ms"),
            mean_bits=sum(bits) / len(bits) if bits else 32.0,
            mean_sparsity=sum(sparsity) / len(sparsity) if sparsity else 0.0,
            student=_describe_student(student),
            feasible=bool(t.user_attrs.get(TrialAttr.FEASIBLE, True)),
            reference=TrialAttr.REFERENCE in t.user_attrs,
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
    """The teacher's figures as the study stores them; None before the teacher is stored."""
    attrs = study.user_attrs
    if StudyAttr.TEACHER_BYTES not in attrs:
        return None
    return Teacher(accuracy=attrs[StudyAttr.TEACHER_ACCURACY], size_bytes=attrs[StudyAttr.TEACHER_BYTES],
                   latency_ms=attrs.get(StudyAttr.TEACHER_LATENCY_MS))
