"""A study's front as plain data: its points, the feasible front, the teacher and the hypervolume history."""

from __future__ import annotations

from squeeze.spaces import SqueezeError

from ._pareto import FrontData, HypervolumeSample, front_data
from ._readers import points, teacher_of
from ._snapshots import history
from ._target import Target, open_study


def front_of(target: Target) -> FrontData:
    """The study's points (all completed trials), its feasible front, the teacher and the hypervolume history."""
    study, engine = open_study(target)
    teacher = teacher_of(study)
    if teacher is None:
        raise SqueezeError(f"study {target.name!r} has no teacher yet; run it first.")
    pts = points(study)
    hist = tuple(HypervolumeSample(trials=c, hypervolume=h, elapsed_s=e) for c, h, e in history(engine, target.name))
    return front_data(pts, teacher=teacher, history=hist)
