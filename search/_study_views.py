"""How a squeeze study reads in optuna-dashboard: a study note, and the front's hypervolume history as a figure.

Both are stored in the study with optuna-dashboard's own functions (``save_note``,
``save_plotly_graph_object``), so they need the ``dashboard`` extra; without it they are skipped and
``squeeze dashboard`` writes them when it starts. The objective names are Optuna's metric names,
set when the study is created (``_context.connect``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from ._attrs import StudyAttr
from ._context import quiet_optuna
from ._pareto import HypervolumeSample

HYPERVOLUME_FIGURE = "hypervolume-history"
"""The id of the hypervolume figure among the study's plots in optuna-dashboard (it is overwritten in place)."""


def dashboard_installed() -> bool:
    """Whether optuna-dashboard (the ``dashboard`` extra) can be imported."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def study_note(name: str, config: Mapping[str, Any], attrs: Mapping[str, Any]) -> str:
    """The study note (Markdown): the task, the objectives and budgets, the teacher's figures, and where artifacts are.

    ``config`` is the study's config as stored (``StudySpec.to_dict()``), ``attrs`` its user attributes.
    """
    task = config.get("task", {})
    objectives = config.get("objectives", {})
    latency = config.get("latency", {})
    model = ", ".join(f"{k} {v}" for k, v in sorted(task.get("model", {}).items())) or "default options"
    lines = [
        f"## squeeze study `{name}`",
        "",
        f"- **Task**: `{task.get('dataset')}`, teacher family `{task.get('family')}` ({model}); "
        f"trials are scored on the validation split (`holdout` {task.get('holdout')}), never on the test split.",
        "- **Objectives**: `accuracy` on the validation split (maximize); `size_bytes`, the artifact's bytes "
        "(minimize); `latency_ratio`, the candidate's time over the teacher's in one process (minimize), "
        f"runtime `{latency.get('runtime', 'torch')}`, batch {latency.get('batch')}, {latency.get('threads')} thread(s).",
    ]
    budgets = [f"{key} {objectives[key]}" for key in ("min_accuracy", "max_size_kb", "max_latency_ratio")
               if objectives.get(key) is not None]
    if budgets:
        lines.append(f"- **Budgets**: {', '.join(budgets)}; the front is the feasible front.")
    if StudyAttr.TEACHER_BYTES in attrs:
        latency_ms = attrs.get(StudyAttr.TEACHER_LATENCY_MS)
        lines.append(
            f"- **Teacher**: accuracy {attrs[StudyAttr.TEACHER_ACCURACY]:.4f}, "
            f"{attrs[StudyAttr.TEACHER_BYTES] / 1024:.1f} KB, "
            + (f"{latency_ms:.3f} ms, " if latency_ms is not None else "")
            + f"weights sha256 `{str(attrs.get(StudyAttr.TEACHER_SHA256, ''))[:16]}…`."
        )
    lines += [
        "",
        "Each completed trial's artifact is under the trial's *Artifacts*: the bytes that were measured, the "
        f"same as `squeeze export {name} --trial N -o FILE`, with the trial's `artifact_sha256`. "
        + ("Load one with onnxruntime." if latency.get("runtime") == "onnxruntime" else
           "Load one with `squeeze.objectives.load_artifact`, which never runs code from the file."),
    ]
    return "\n".join(lines) + "\n"


def write_note_once(study: optuna.Study, config: Mapping[str, Any]) -> bool:
    """Save :func:`study_note` as the study's note unless it has one (a person's edits are kept); True if written."""
    if not dashboard_installed():
        return False
    from optuna_dashboard import get_note, save_note

    if get_note(study):
        return False
    save_note(study, study_note(study.study_name, config, study.user_attrs))
    return True


class _Figure:
    """A Plotly figure as plain JSON: all ``save_plotly_graph_object`` asks of one (``to_json``), without Plotly."""

    def __init__(self, data: Sequence[Mapping[str, Any]], layout: Mapping[str, Any]) -> None:
        self._json = json.dumps({"data": list(data), "layout": dict(layout)})

    def to_json(self) -> str:
        return self._json


def hypervolume_figure(history: Sequence[HypervolumeSample]) -> _Figure:
    """The hypervolume of the feasible front after each snapshot, against completed trials."""
    return _Figure(
        [{"type": "scatter", "mode": "lines+markers", "name": "hypervolume",
          "x": [h.trials for h in history], "y": [h.hypervolume for h in history]}],
        {"title": {"text": "Hypervolume of the feasible front"},
         "xaxis": {"title": {"text": "completed trials"}},
         "yaxis": {"title": {"text": "hypervolume"}, "rangemode": "tozero"}},
    )


def save_hypervolume(study: optuna.Study, history: Sequence[HypervolumeSample]) -> bool:
    """Store (or replace) the hypervolume figure among the study's plots; True if written."""
    if not history or not dashboard_installed():
        return False
    from optuna_dashboard import save_plotly_graph_object

    with quiet_optuna():
        save_plotly_graph_object(study, hypervolume_figure(history), graph_object_id=HYPERVOLUME_FIGURE)
    return True
