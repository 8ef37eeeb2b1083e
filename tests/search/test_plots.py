"""draw() writes every figure in every format from plain data, without pyplot."""

from __future__ import annotations

import pytest

from squeeze.search._pareto import FrontData, HypervolumeSample, Point, Teacher, front_data
from squeeze.search._plots import (
    _ACC,
    _LAT,
    _SIZE,
    _front3d_figure,
    _hypervolume_figure,
    _projections_figure,
    _staircase,
    draw,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEACHER = Teacher(accuracy=0.92, size_bytes=400_000, latency_ms=3.0)


def _data(*, history=True) -> FrontData:
    points = [
        Point(0, 0.90, 100_000, 0.40, mean_bits=8.0, reference=True, finished_s=5.0),
        Point(1, 0.85, 50_000, 0.35, mean_bits=4.0, reference=True, finished_s=9.0),
        Point(2, 0.88, 120_000, 0.60, finished_s=14.0),  # dominated by 0
        Point(3, 0.91, 200_000, 0.30, finished_s=20.0),
        Point(4, 0.95, 90_000, 0.20, feasible=False, finished_s=26.0),
        Point(5, 0.60, 20_000, 0.90, finished_s=31.0),
    ]
    samples = [
        HypervolumeSample(trials=1, hypervolume=1.2, elapsed_s=5.0),
        HypervolumeSample(trials=3, hypervolume=1.5, elapsed_s=14.0),
        HypervolumeSample(trials=6, hypervolume=1.9, elapsed_s=31.0),
    ]
    return front_data(points, teacher=TEACHER, history=samples if history else ())


def test_draw_writes_three_figures_in_each_format(tmp_path):
    out = tmp_path / "nested" / "plots"
    paths = draw(_data(), out)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in ("projections", "front3d", "hypervolume")
        for ext in ("png", "svg")
    )
    for path in paths:
        assert path.parent == out
        assert path.stat().st_size > 0
        head = path.read_bytes()[:8]
        if path.suffix == ".png":
            assert head == PNG_MAGIC
        else:
            assert path.read_text()[:200].lstrip().startswith(("<?xml", "<svg"))


def test_draw_leaves_no_pyplot_figures_open(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = set(plt.get_fignums())
    draw(_data(), tmp_path, formats=("png",))
    assert set(plt.get_fignums()) == before


def test_draw_handles_empty_history_and_no_trials(tmp_path):
    empty = front_data([], teacher=TEACHER)
    paths = draw(empty, tmp_path, formats=["PNG", ".pdf"])
    assert [p.name for p in paths] == [
        "projections.png", "projections.pdf", "front3d.png", "front3d.pdf",
        "hypervolume.png", "hypervolume.pdf",
    ]
    assert all(p.stat().st_size > 0 for p in paths)


def test_empty_history_figure_says_so():
    fig = _hypervolume_figure(_data(history=False))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no snapshots yet" in texts
    assert len(fig.axes) == 1


def test_history_with_times_gets_a_wall_clock_panel():
    fig = _hypervolume_figure(_data())
    assert [ax.get_xlabel() for ax in fig.axes] == [
        "completed trials", "wall-clock time since study start (s)"
    ]


def test_every_axis_is_labelled_and_the_legend_names_references_and_teacher():
    data = _data()
    figures = [_projections_figure(data), _front3d_figure(data), _hypervolume_figure(data)]
    for fig in figures:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert {"uniform reference", "teacher", "Pareto front", "over budget", "trial"} <= set(legend)
    assert len(figures[0].axes) == 3


def test_projection_line_traces_the_front_in_each_pair_of_axes():
    front = _data().front  # trials 1 (50 kB, 85 %, 0.35) and 0 (100 kB, 90 %, 0.40), 3, 5
    size_acc = _staircase(front, _SIZE[1], _ACC[1], maximise_y=True)
    assert [round(x) for x, _ in size_acc] == [20, 50, 100, 200]
    size_lat = _staircase(front, _SIZE[1], _LAT[1], maximise_y=False)
    assert size_lat == [(20.0, 0.9), (50.0, 0.35), (200.0, 0.3)]


def test_draw_refuses_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match="formats"):
        draw(_data(), tmp_path, formats=("bmpx",))
    with pytest.raises(ValueError, match="at least one"):
        draw(_data(), tmp_path, formats=())
