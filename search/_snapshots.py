"""Pareto-front snapshots: which trials were on the front, and its hypervolume, every N trials."""

from __future__ import annotations

import optuna
import sqlalchemy as sa

from . import _storage as st
from ._context import Context
from ._pareto import HypervolumeSample, Point, Teacher, hypervolume, pareto_front
from ._readers import points
from ._study_views import save_hypervolume


class RunningFront:
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


def maybe_snapshot(ctx: Context, study: optuna.Study, completed: int, teacher: Teacher, *,
                    front: RunningFront) -> None:
    """Store a snapshot when ``completed`` is a multiple of ``snapshot_every`` or the budget is met."""
    every = ctx.spec.study.snapshot_every
    if completed % every and completed != ctx.spec.study.trials:
        return
    pts = points(study)
    members = front.update(pts)
    hv = hypervolume(members, teacher=teacher)
    elapsed = max((p.finished_s or 0.0) for p in pts) if pts else None
    st.add_snapshot(ctx.engine, ctx.spec.study.name, completed=completed, front=[p.number for p in members],
                    hypervolume=hv, elapsed_s=elapsed)
    # The history as a figure on the study's page in optuna-dashboard (with the extra), kept current; under the
    # study lock, since two workers that create the figure's attributes at once would collide on their keys.
    with st.study_lock(ctx.engine, ctx.spec.study.name):
        save_hypervolume(study, [HypervolumeSample(trials=c, hypervolume=h, elapsed_s=e)
                                 for c, h, e in history(ctx.engine, ctx.spec.study.name)])


def history(engine: sa.Engine, name: str) -> list[tuple[int, float, float | None]]:
    """(completed trials, hypervolume, elapsed seconds) of every stored snapshot."""
    return [(r.completed, r.hypervolume, r.elapsed_s) for r in st.snapshots(engine, name)]
