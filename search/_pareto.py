"""The Pareto front and its hypervolume, as plain data that reports and plots can share.

Everything here works on :class:`Point` records (one per completed trial), never on an
Optuna study, so the numbers can be computed and tested without a storage or a figure.

The three objectives are compared in a *normalised loss space* where every axis is minimised:

* ``1 - accuracy`` (error, in ``[0, 1]``),
* ``size_bytes / teacher.size_bytes`` (size relative to the teacher),
* ``latency_ratio`` (candidate latency / teacher latency; already relative to the teacher).

Dividing by the teacher puts every axis on one scale: bytes differ by orders of magnitude between
tasks, and absolute latency differs between hosts. It does not make latency comparable across kinds of
CPU (int8 kernels pay on some and not on others), so hypervolumes compare only between studies with the
same latency target (``docs/latency.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Optuna keeps its exact hypervolume (WFG, with an O(n^2) special case for 3-D) in a private
# module; it is the same code that ``plot_hypervolume_history`` uses and optuna is pinned to 5.x.
from optuna._hypervolume import compute_hypervolume

_REFERENCE = (1.0, 1.5, 2.0)


@dataclass(frozen=True)
class Point:
    """One completed trial, reduced to what the front and the plots need.

    ``accuracy`` (held-out, in ``[0, 1]``) is maximised; ``size_bytes`` and ``latency_ratio``
    (candidate latency / teacher latency) are minimised. ``feasible`` says whether the trial
    meets the study's budgets; ``reference`` marks a uniform reference policy that the study
    enqueued. ``finished_s`` is the wall-clock time since the study started when the trial
    finished.
    """

    number: int
    accuracy: float
    size_bytes: int
    latency_ratio: float
    latency_ms: float | None = None
    mean_bits: float | None = None
    mean_sparsity: float | None = None
    student: str = ""
    feasible: bool = True
    reference: bool = False
    finished_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(
                f"`accuracy` of trial {self.number} must be in [0, 1], but got {self.accuracy!r}; "
                "pass a fraction, not a percentage."
            )
        if self.size_bytes < 0:
            raise ValueError(
                f"`size_bytes` of trial {self.number} must be >= 0, but got {self.size_bytes!r}."
            )
        if not (math.isfinite(self.latency_ratio) and self.latency_ratio >= 0.0):
            raise ValueError(
                f"`latency_ratio` of trial {self.number} must be finite and >= 0, "
                f"but got {self.latency_ratio!r}."
            )


@dataclass(frozen=True)
class Teacher:
    """The uncompressed model every candidate is measured against."""

    accuracy: float
    size_bytes: int
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValueError(
                f"teacher `accuracy` must be in [0, 1], but got {self.accuracy!r}; "
                "pass a fraction, not a percentage."
            )
        if self.size_bytes <= 0:
            raise ValueError(
                f"teacher `size_bytes` must be > 0 (sizes are divided by it), "
                f"but got {self.size_bytes!r}."
            )


@dataclass(frozen=True)
class HypervolumeSample:
    """The hypervolume after ``trials`` completed trials (and ``elapsed_s`` seconds, if known)."""

    trials: int
    hypervolume: float
    elapsed_s: float | None = None


@dataclass(frozen=True)
class FrontData:
    """Everything a report or a plot needs: all trials, the feasible front, the teacher, history.

    ``front`` is sorted by ``size_bytes``; build it with :func:`front_data` so it agrees with
    ``points``.
    """

    points: tuple[Point, ...]
    front: tuple[Point, ...]
    teacher: Teacher
    history: tuple[HypervolumeSample, ...] = ()


def _objectives(point: Point) -> tuple[float, float, float]:
    # Every axis minimised; raw bytes are fine for dominance (scaling does not change order).
    return (-point.accuracy, float(point.size_bytes), point.latency_ratio)


def dominates_values(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether the minimised values ``a`` are nowhere worse than ``b`` and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` in all three objectives and better in one."""
    return dominates_values(_objectives(a), _objectives(b))


def pareto_front(points: Sequence[Point], *, feasible_only: bool = True) -> list[Point]:
    """The non-dominated points under (accuracy max, size min, latency ratio min).

    With ``feasible_only`` (the default), points that break a budget are dropped *before*
    dominance is checked, so an infeasible point never hides a feasible one. Points with
    identical objective values are all kept. The result is sorted by ``size_bytes``, then by
    accuracy (best first), latency ratio and trial number.
    """
    pool = [p for p in points if p.feasible or not feasible_only]
    values = [_objectives(p) for p in pool]
    # O(n^2) is fine: studies have hundreds of trials, not millions.
    front = [
        p
        for p, v in zip(pool, values)
        if not any(dominates_values(other, v) for other in values)
    ]
    return sorted(front, key=lambda p: (p.size_bytes, -p.accuracy, p.latency_ratio, p.number))


def references_beaten(points: Sequence[Point], *,
                      prefer: Callable[[Point], bool] | None = None) -> list[tuple[Point, Point | None]]:
    """Each uniform reference among ``points``, with the smallest feasible front point that dominates it, or None.

    This is what a study answers for someone who would otherwise set every layer alike: does
    the front hold a plan at least as good in all three objectives and better in one than the
    uniform policy? A reference that nothing dominates is still on the front (if feasible).
    With ``prefer``, the smallest dominating point it accepts is named where there is one (for
    example a per-layer plan rather than another uniform policy), else the smallest of all.
    """
    front = pareto_front(points)
    beaten = []
    for ref in (p for p in points if p.reference):
        better = [p for p in front if dominates(p, ref)]
        preferred = [p for p in better if prefer(p)] if prefer is not None else []
        beaten.append((ref, min(preferred or better, key=lambda p: (p.size_bytes, p.number)) if better else None))
    return beaten


def reference_point(teacher: Teacher) -> tuple[float, float, float]:
    """The hypervolume reference point in normalised loss space: ``(1.0, 1.5, 2.0)``.

    That is error 1.0 (accuracy 0), 1.5x the teacher's bytes and 2x the teacher's latency.
    A candidate must beat all three to count; the box is generous on size and latency so that
    a student that is a little larger or slower than the teacher (for example a float16 copy
    with overhead) still registers. Because the axes are already divided by the teacher, the
    point is the same for every teacher; ``teacher`` is taken so that callers state which
    model the ratios refer to. The largest possible hypervolume is ``1.0 * 1.5 * 2.0 = 3.0``.
    """
    del teacher  # the normalisation already carries the teacher's units
    return _REFERENCE


def _losses(points: Iterable[Point], teacher: Teacher) -> np.ndarray:
    rows = [
        (1.0 - p.accuracy, p.size_bytes / teacher.size_bytes, p.latency_ratio) for p in points
    ]
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def hypervolume(points: Sequence[Point], *, teacher: Teacher) -> float:
    """Exact hypervolume of the feasible points in normalised loss space.

    Each feasible point is mapped to ``(1 - accuracy, size_bytes / teacher.size_bytes,
    latency_ratio)`` and the volume they dominate inside the box below
    :func:`reference_point` is returned. Points outside that box (and infeasible points)
    contribute nothing. Empty input gives ``0.0``.
    """
    reference = np.asarray(reference_point(teacher), dtype=float)
    losses = _losses((p for p in points if p.feasible), teacher)
    inside = losses[np.all(losses <= reference, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    return float(compute_hypervolume(inside, reference))


def contributions(points: Sequence[Point], *, teacher: Teacher) -> list[float]:
    """The hypervolume each point holds alone: the whole minus the hypervolume without it, in ``points``' order.

    A point that another dominates, an infeasible one, one outside the box, and each of two
    points with the same values hold none. The hypervolume indicator of SMS-EMOA ranks a
    population by this; ``auto`` moves the front points that hold the most of it.
    """
    reference = np.asarray(reference_point(teacher), dtype=float)
    losses = _losses(points, teacher)
    counted = np.array([p.feasible for p in points], dtype=bool).reshape(-1)
    counted &= np.all(losses <= reference, axis=1)

    def volume(mask: np.ndarray) -> float:
        return float(compute_hypervolume(losses[mask], reference)) if mask.any() else 0.0

    whole = volume(counted)
    shares = []
    for i in range(len(points)):
        if not counted[i]:
            shares.append(0.0)
            continue
        without = counted.copy()
        without[i] = False
        shares.append(max(0.0, whole - volume(without)))
    return shares


def hypervolume_history(points: Sequence[Point], *, teacher: Teacher) -> list[HypervolumeSample]:
    """The hypervolume after each completed trial, in the order the trials finished.

    Trials are ordered by ``finished_s`` when every point has it, otherwise by trial number.
    ``trials`` counts all completed trials so far (feasible or not); ``elapsed_s`` is the
    finishing time of the last one, or ``None`` when it is unknown.
    """
    if all(p.finished_s is not None for p in points):
        ordered = sorted(points, key=lambda p: (p.finished_s, p.number))
    else:
        ordered = sorted(points, key=lambda p: p.number)
    samples: list[HypervolumeSample] = []
    current = 0.0
    for i, point in enumerate(ordered, start=1):
        if point.feasible:  # an infeasible trial cannot move the hypervolume
            current = hypervolume(ordered[:i], teacher=teacher)
        samples.append(HypervolumeSample(trials=i, hypervolume=current, elapsed_s=point.finished_s))
    return samples


def front_data(
    points: Sequence[Point],
    *,
    teacher: Teacher,
    history: Sequence[HypervolumeSample] = (),
) -> FrontData:
    """Bundle the completed trials with their feasible front, the teacher and the history.

    ``points`` are stored sorted by trial number; ``front`` is :func:`pareto_front` of them.
    """
    ordered = tuple(sorted(points, key=lambda p: p.number))
    return FrontData(
        points=ordered,
        front=tuple(pareto_front(ordered)),
        teacher=teacher,
        history=tuple(history),
    )
