"""Pareto front, reference point and exact hypervolume on hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from squeeze.search._pareto import (
    FrontData,
    HypervolumeSample,
    Point,
    Teacher,
    contributions,
    front_data,
    hypervolume,
    hypervolume_history,
    pareto_front,
    reference_point,
    references_beaten,
)

TEACHER = Teacher(accuracy=0.9, size_bytes=1000, latency_ms=2.0)


def _pt(number, accuracy, size_bytes, latency_ratio, **kw) -> Point:
    return Point(number=number, accuracy=accuracy, size_bytes=size_bytes,
                 latency_ratio=latency_ratio, **kw)


def _grid_hypervolume(losses: np.ndarray, ref: tuple[float, ...]) -> float:
    """Independent exact oracle: split the box at every coordinate and add dominated cells."""
    losses = losses[np.all(losses <= np.asarray(ref), axis=1)]
    if len(losses) == 0:
        return 0.0
    cuts = [np.unique(np.append(losses[:, k], ref[k])) for k in range(3)]
    total = 0.0
    for i, j, k in itertools.product(*(range(len(c) - 1) for c in cuts)):
        corner = np.array([cuts[0][i], cuts[1][j], cuts[2][k]])
        if np.any(np.all(losses <= corner, axis=1)):
            total += (cuts[0][i + 1] - corner[0]) * (cuts[1][j + 1] - corner[1]) * (
                cuts[2][k + 1] - corner[2]
            )
    return total


def _losses(points, teacher=TEACHER) -> np.ndarray:
    return np.array(
        [(1 - p.accuracy, p.size_bytes / teacher.size_bytes, p.latency_ratio)
         for p in points if p.feasible],
        dtype=float,
    ).reshape(-1, 3)


# --- pareto_front ---------------------------------------------------------------------------

A = _pt(0, 0.90, 1000, 0.5)
B = _pt(1, 0.80, 2000, 0.6)  # dominated by A on every axis
C = _pt(2, 0.95, 3000, 0.9)  # most accurate
D = _pt(3, 0.70, 500, 1.2)  # smallest
E = _pt(4, 0.99, 100, 0.1, feasible=False)  # dominates everything, but over budget
F = _pt(5, 0.90, 1000, 0.5)  # same values as A: kept
G = _pt(6, 0.90, 1000, 0.7)  # ties A on two axes, worse on latency: dominated
FIXED = [A, B, C, D, E, F, G]


def test_front_excludes_dominated_and_infeasible_points_and_sorts_by_size():
    front = pareto_front(FIXED)
    assert [p.number for p in front] == [3, 0, 5, 2]


def test_front_with_infeasible_points_lets_them_dominate():
    assert [p.number for p in pareto_front(FIXED, feasible_only=False)] == [4]


def test_front_of_nothing_is_empty():
    assert pareto_front([]) == []
    assert pareto_front([E]) == []


def test_references_beaten_names_the_smallest_feasible_front_point_that_dominates_each():
    refs = [
        _pt(0, 0.90, 1000, 0.5, reference=True),  # dominated by 2 and by 3; only 3 is on the front
        _pt(1, 0.95, 800, 0.5, reference=True),   # on the front: nothing else is as accurate
        _pt(4, 0.80, 300, 0.4, reference=True),   # only the infeasible 5 dominates it: not beaten
    ]
    others = [
        _pt(2, 0.90, 900, 0.5),
        _pt(3, 0.92, 700, 0.45),
        _pt(5, 0.99, 100, 0.1, feasible=False),
        _pt(6, 0.90, 1000, 0.5),  # ties reference 0: does not beat it
    ]
    beaten = references_beaten(refs + others)
    assert [(ref.number, by.number if by else None) for ref, by in beaten] == [(0, 3), (1, None), (4, None)]
    assert references_beaten(others) == []
    # Reference 0 is dominated by reference 1 as well; preferring plans that are not references
    # still names 3 (the smaller), and preferring references names 1.
    assert references_beaten(refs + others, prefer=lambda p: not p.reference)[0][1].number == 3
    assert references_beaten(refs + others, prefer=lambda p: p.reference)[0][1].number == 1


def test_front_keeps_trade_offs_on_each_pair_of_axes():
    fast = _pt(0, 0.8, 1000, 0.2)
    small = _pt(1, 0.8, 200, 0.9)
    accurate = _pt(2, 0.95, 1000, 0.9)
    assert {p.number for p in pareto_front([accurate, fast, small])} == {0, 1, 2}


# --- reference point and hypervolume --------------------------------------------------------

def test_reference_point_is_error_one_one_and_a_half_size_twice_latency():
    assert reference_point(TEACHER) == (1.0, 1.5, 2.0)
    assert reference_point(Teacher(accuracy=0.5, size_bytes=7)) == (1.0, 1.5, 2.0)


def test_hypervolume_of_nothing_is_zero():
    assert hypervolume([], teacher=TEACHER) == 0.0


def test_hypervolume_of_one_point_is_its_box():
    # loss (0.25, 0.5, 0.5): box (1 - 0.25) * (1.5 - 0.5) * (2 - 0.5)
    point = _pt(0, 0.75, 500, 0.5)
    assert hypervolume([point], teacher=TEACHER) == pytest.approx(0.75 * 1.0 * 1.5)


def test_hypervolume_of_two_overlapping_points_counts_the_overlap_once():
    a = _pt(0, 0.75, 500, 1.0)  # loss (0.25, 0.5, 1.0): 0.75 * 1.0 * 1.0 = 0.75
    b = _pt(1, 0.50, 250, 0.5)  # loss (0.5, 0.25, 0.5):  0.5 * 1.25 * 1.5 = 0.9375
    # overlap at the component-wise max (0.5, 0.5, 1.0): 0.5 * 1.0 * 1.0 = 0.5
    assert hypervolume([a, b], teacher=TEACHER) == pytest.approx(0.75 + 0.9375 - 0.5)


def test_hypervolume_ignores_infeasible_dominated_and_out_of_box_points():
    a = _pt(0, 0.75, 500, 0.5)
    base = hypervolume([a], teacher=TEACHER)
    extra = [
        _pt(1, 0.99, 10, 0.1, feasible=False),  # would dominate a, but over budget
        _pt(2, 0.70, 600, 0.6),  # dominated by a
        _pt(3, 0.99, 2000, 0.1),  # 2x teacher bytes: outside the box
        _pt(4, 0.99, 10, 2.0),  # exactly on the latency face: zero volume
    ]
    assert hypervolume([a, *extra], teacher=TEACHER) == pytest.approx(base)
    assert hypervolume(extra[2:], teacher=TEACHER) == 0.0


def test_hypervolume_is_bounded_by_the_whole_box():
    perfect = _pt(0, 1.0, 0, 0.0)
    assert hypervolume([perfect], teacher=TEACHER) == pytest.approx(1.0 * 1.5 * 2.0)


def _random_points(seed: int, n: int) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        _pt(i, float(rng.uniform(0.3, 1.0)), int(rng.integers(50, 1700)),
            float(rng.uniform(0.1, 2.3)), feasible=bool(rng.uniform() > 0.2))
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_an_independent_exact_grid_count(seed):
    points = _random_points(seed, 12)
    expected = _grid_hypervolume(_losses(points), reference_point(TEACHER))
    assert hypervolume(points, teacher=TEACHER) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_never_decreases_when_a_point_is_added(seed):
    points = _random_points(seed, 30)
    values = [hypervolume(points[:i], teacher=TEACHER) for i in range(len(points) + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_hypervolume_of_the_front_equals_that_of_all_points():
    points = _random_points(7, 25)
    assert hypervolume(pareto_front(points), teacher=TEACHER) == pytest.approx(
        hypervolume(points, teacher=TEACHER)
    )


# --- history and bundling -------------------------------------------------------------------

def test_history_follows_finishing_order_and_counts_every_trial():
    a = _pt(0, 0.75, 500, 0.5, finished_s=30.0)
    b = _pt(1, 0.50, 250, 0.5, finished_s=10.0)
    c = _pt(2, 0.99, 10, 0.1, feasible=False, finished_s=20.0)
    history = hypervolume_history([a, b, c], teacher=TEACHER)
    assert [s.trials for s in history] == [1, 2, 3]
    assert [s.elapsed_s for s in history] == [10.0, 20.0, 30.0]
    assert history[0].hypervolume == pytest.approx(hypervolume([b], teacher=TEACHER))
    assert history[1].hypervolume == history[0].hypervolume  # infeasible: no change
    assert history[2].hypervolume == pytest.approx(hypervolume([a, b], teacher=TEACHER))


def test_history_without_times_uses_trial_numbers():
    points = [_pt(1, 0.5, 250, 0.5), _pt(0, 0.75, 500, 0.5, finished_s=3.0)]
    history = hypervolume_history(points, teacher=TEACHER)
    assert [s.elapsed_s for s in history] == [3.0, None]
    assert history[0].hypervolume == pytest.approx(hypervolume(points[1:], teacher=TEACHER))


def test_front_data_bundles_points_front_and_history():
    history = [HypervolumeSample(trials=1, hypervolume=0.5, elapsed_s=1.0)]
    data = front_data(list(reversed(FIXED)), teacher=TEACHER, history=history)
    assert isinstance(data, FrontData)
    assert [p.number for p in data.points] == list(range(7))
    assert data.front == tuple(pareto_front(FIXED))
    assert data.history == tuple(history)
    assert data.teacher is TEACHER


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(accuracy=90.0), "fraction"),
        (dict(size_bytes=-1), "size_bytes"),
        (dict(latency_ratio=float("nan")), "latency_ratio"),
    ],
)
def test_point_refuses_values_outside_their_range(kwargs, match):
    fields = dict(number=0, accuracy=0.5, size_bytes=10, latency_ratio=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        Point(**fields)


def test_teacher_needs_a_positive_size():
    with pytest.raises(ValueError, match="size_bytes"):
        Teacher(accuracy=0.9, size_bytes=0)


def test_contribution_is_the_hypervolume_a_point_alone_holds():
    ref = reference_point(TEACHER)
    points = [_pt(0, 0.9, 500, 1.0), _pt(1, 0.8, 200, 0.5), _pt(2, 0.5, 100, 0.4), _pt(3, 0.5, 100, 0.4)]
    alone = contributions(points, teacher=TEACHER)
    total = hypervolume(points, teacher=TEACHER)
    for i, share in enumerate(alone):
        rest = points[:i] + points[i + 1 :]
        assert share == pytest.approx(total - hypervolume(rest, teacher=TEACHER))
    # Two points with the same values share their volume: neither holds any of it alone.
    assert alone[2] == alone[3] == 0.0
    assert alone[0] > 0 and alone[1] > 0
    # A point alone holds its whole box.
    (only,) = contributions([points[1]], teacher=TEACHER)
    assert only == pytest.approx((ref[0] - 0.2) * (ref[1] - 0.2) * (ref[2] - 0.5))


def test_contribution_of_a_dominated_infeasible_or_out_of_box_point_is_zero():
    points = [_pt(0, 0.9, 100, 0.5), _pt(1, 0.8, 200, 0.6), _pt(2, 0.95, 50, 0.4, feasible=False),
              _pt(3, 0.99, 5000, 0.1)]
    alone = contributions(points, teacher=TEACHER)
    assert alone[0] > 0 and alone[1:] == [0.0, 0.0, 0.0]
    assert contributions([], teacher=TEACHER) == []
