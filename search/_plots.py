"""Draw a :class:`FrontData` to image files: projections, a 3-D view and the hypervolume history.

Figures are built as bare :class:`matplotlib.figure.Figure` objects on an Agg canvas, never
through ``pyplot``: nothing touches the global backend or pyplot's figure registry, so drawing
works headless, inside a running study, and leaks no figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._pareto import FrontData, Point, reference_point

_KB = 1000.0  # sizes are shown in kB (SI), matching the byte counts in reports

# One look per kind of point, shared by every panel so the legend means the same everywhere.
_OTHER = dict(s=18, color="tab:blue", alpha=0.35, linewidths=0, label="trial")
_INFEASIBLE = dict(s=18, color="0.6", alpha=0.6, marker="x", linewidths=1, label="over budget")
_FRONT = dict(
    s=42, color="tab:red", edgecolors="black", linewidths=0.5, zorder=3, label="Pareto front"
)
_REFERENCE = dict(
    s=90, marker="D", facecolors="none", edgecolors="tab:green", linewidths=1.5, zorder=4,
    label="uniform reference",
)
_TEACHER = dict(s=260, marker="*", color="gold", edgecolors="black", linewidths=0.8, zorder=5,
                label="teacher")

# Each axis: (label with unit, value of a point, value of the teacher).
_Axis = tuple[str, Callable[[Point], float], Callable[[FrontData], float]]
_SIZE: _Axis = (
    "model size (kB)", lambda p: p.size_bytes / _KB, lambda d: d.teacher.size_bytes / _KB
)
_ACC: _Axis = ("accuracy (%)", lambda p: 100.0 * p.accuracy, lambda d: 100.0 * d.teacher.accuracy)
_LAT: _Axis = ("latency (x teacher)", lambda p: p.latency_ratio, lambda d: 1.0)
_PAIRS = ((_SIZE, _ACC), (_LAT, _ACC), (_SIZE, _LAT))

# Strip timestamps so the same data gives the same files (useful when outputs are diffed).
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {"Software": None}}


def draw(
    data: FrontData, out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write ``projections``, ``front3d`` and ``hypervolume`` figures for ``data`` to ``out_dir``.

    One file per figure and format (for example ``projections.png``); ``out_dir`` is created
    if needed and existing files are overwritten. ``formats`` are file extensions matplotlib
    can write (``png``, ``svg``, ``pdf``, ...). Returns the written paths, figure by figure.
    """
    exts = _check_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, build in (
        ("projections", _projections_figure),
        ("front3d", _front3d_figure),
        ("hypervolume", _hypervolume_figure),
    ):
        fig = build(data)
        FigureCanvasAgg(fig)
        for ext in exts:
            path = out / f"{name}.{ext}"
            fig.savefig(path, format=ext, dpi=150, metadata=_METADATA.get(ext))
            written.append(path)
        fig.clear()  # drop artists now rather than waiting for the garbage collector
    return written


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = (formats,)
    supported = FigureCanvasBase.get_supported_filetypes()
    exts = list(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    if not exts:
        raise ValueError("`formats` must name at least one file type, but got none; try ('png',).")
    unknown = [f for f in exts if f not in supported]
    if unknown:
        raise ValueError(
            f"`formats` must be among {sorted(supported)}, but got {unknown}."
        )
    return exts


def _split(data: FrontData) -> tuple[list[Point], list[Point], list[Point], list[Point]]:
    on_front = {p.number for p in data.front}  # trial numbers are unique within a study
    front = list(data.front)
    others = [p for p in data.points if p.feasible and p.number not in on_front]
    infeasible = [p for p in data.points if not p.feasible]
    references = [p for p in data.points if p.reference]
    return front, others, infeasible, references


def _scatter(
    ax, points: Sequence[Point], fns: Sequence[Callable[[Point], float]], style: dict
) -> None:
    if points:  # skip empty groups so the legend lists only what is drawn
        ax.scatter(*([f(p) for p in points] for f in fns), **style)


def _staircase(
    front: Sequence[Point],
    fx: Callable[[Point], float],
    fy: Callable[[Point], float],
    *,
    maximise_y: bool,
) -> list[tuple[float, float]]:
    # A 3-D front is not a curve in any one projection: joining all its points zig-zags. The
    # line instead traces the front points that are still non-dominated in this pair of axes
    # (the 2-D attainment staircase); the other front points are highlighted but not joined.
    sign = 1.0 if maximise_y else -1.0
    steps: list[tuple[float, float]] = []
    for p in sorted(front, key=lambda p: (fx(p), -sign * fy(p))):
        if not steps or sign * fy(p) > sign * steps[-1][1]:
            steps.append((fx(p), fy(p)))
    return steps


def _projections_figure(data: FrontData) -> Figure:
    fig = Figure(figsize=(16, 5), layout="constrained")
    front, others, infeasible, references = _split(data)
    for ax, (x, y) in zip(fig.subplots(1, 3), _PAIRS):
        fns = (x[1], y[1])
        _scatter(ax, others, fns, _OTHER)
        _scatter(ax, infeasible, fns, _INFEASIBLE)
        steps = _staircase(front, x[1], y[1], maximise_y=y is _ACC)
        if steps:
            ax.step(*zip(*steps), where="post", color="tab:red", linewidth=1, alpha=0.7, zorder=2)
        _scatter(ax, front, fns, _FRONT)
        _scatter(ax, references, fns, _REFERENCE)
        ax.scatter([x[2](data)], [y[2](data)], **_TEACHER)
        ax.set_xlabel(x[0])
        ax.set_ylabel(y[0])
        ax.grid(True, alpha=0.3)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=5, fontsize="small")
    fig.suptitle(
        f"{len(data.points)} completed trials, {len(data.front)} on the feasible Pareto front"
    )
    return fig


def _front3d_figure(data: FrontData) -> Figure:
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    front, others, infeasible, references = _split(data)
    axes = (_SIZE, _LAT, _ACC)
    fns = [a[1] for a in axes]
    _scatter(ax, others, fns, _OTHER)
    _scatter(ax, infeasible, fns, _INFEASIBLE)
    _scatter(ax, front, fns, _FRONT)
    _scatter(ax, references, fns, _REFERENCE)
    ax.scatter(*([a[2](data)] for a in axes), **_TEACHER)
    ax.set_xlabel(_SIZE[0])
    ax.set_ylabel(_LAT[0])
    ax.set_zlabel(_ACC[0])
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{len(data.front)} Pareto-optimal of {len(data.points)} trials")
    return fig


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds >= 3 * 3600:
        return "h", 3600.0
    if seconds >= 600:
        return "min", 60.0
    return "s", 1.0


def _hypervolume_figure(data: FrontData) -> Figure:
    history = data.history
    timed = [s for s in history if s.elapsed_s is not None]
    fig = Figure(figsize=(12 if timed else 6.5, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    ref = reference_point(data.teacher)
    ylabel = f"hypervolume (normalised; max {ref[0] * ref[1] * ref[2]:g})"

    ax = axes[0]
    ax.set_xlabel("completed trials")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not history:
        ax.text(0.5, 0.5, "no snapshots yet", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    else:
        ax.step([s.trials for s in history], [s.hypervolume for s in history],
                where="post", marker=".", color="tab:red")
        ax.set_ylim(bottom=0.0)

    if timed:
        unit, scale = _time_unit(max(s.elapsed_s for s in timed))
        ax = axes[1]
        ax.step([s.elapsed_s / scale for s in timed], [s.hypervolume for s in timed],
                where="post", marker=".", color="tab:purple")
        ax.set_xlabel(f"wall-clock time since study start ({unit})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0.0)
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"Hypervolume of the feasible front "
        f"(reference: error {ref[0]:g}, {ref[1]:g}x size, {ref[2]:g}x latency)"
    )
    return fig
