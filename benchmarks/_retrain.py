"""Plans of a study's trials trained again under other training seeds (shared by the benchmarks).

Every trial of a study trains with the study's one seed, so two plans of a study differ by their
plans and by one shared draw of training noise; a plan trained again under another seed scores
otherwise, by a few held-out images. This trains the plans of chosen trials again with the study's
data, teacher and budget under other seeds and scores each on the held-out split, and a trial's plan
with some of its parameters changed as well (:func:`moved`). Latency is not measured again where the
study timed the same network (its measurement is reused), and nothing is written to the study, so
the accuracies do not depend on what else runs on the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from squeeze.search import load_spec, open_session
from squeeze.spaces import SqueezeError


def own_seed(study_file: str | Path) -> int:
    """The training seed of the study created from ``study_file``."""
    return _spec(study_file).training_seed()


def retrained(study_file: str | Path, numbers: Sequence[int], seeds: Sequence[int], *,
              progress: Callable[[int, list[float]], None] | None = None) -> dict[int, list[float]]:
    """Held-out accuracy of each completed trial in ``numbers``, its plan trained under each of ``seeds``.

    ``progress`` is called with a trial's number and its accuracies once it is done. Raises
    :class:`SqueezeError` naming the trials that are not completed trials of the study.
    """
    def report(index: int, scores: Retrained) -> None:
        if progress is not None:
            progress(numbers[index], scores.accuracy)

    found = moved(study_file, [(n, {}) for n in numbers], seeds, progress=report)
    return {n: scores.accuracy for n, scores in zip(numbers, found)}


@dataclass(frozen=True)
class Retrained:
    """A plan trained under several seeds: its accuracy under each, its bytes and its latency ratio."""

    accuracy: list[float]
    size_bytes: int
    latency_ratio: float
    latency_reused: bool
    """True when the network is one the study timed (its figure is the study's); else timed here, once."""


def moved(study_file: str | Path, plans: Sequence[tuple[int, Mapping[str, str]]], seeds: Sequence[int], *,
          progress: Callable[[int, Retrained], None] | None = None) -> list[Retrained]:
    """Each (trial number, changes) in ``plans``: the trial's parameters with ``changes``, trained under each of ``seeds``.

    ``changes`` maps parameter names of the trial to new values, written as text (``"8"``, ``"0.25"``,
    ``"float"``) and read as the choice of that parameter's distribution they name; with no
    changes, the trial's own plan. ``progress`` is called with a plan's index and its figures once
    it is done. Raises :class:`SqueezeError` naming the trial, parameter or value that is not
    there, before anything is trained.
    """
    spec = _spec(study_file)
    session = open_session(spec, create=False)
    study = session.study
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    missing = sorted({n for n, _ in plans if n not in done})
    if missing:
        raise SqueezeError(f"trials {missing} are not completed trials of study {spec.study.name!r}.")
    params = [_changed(done[n], changes) for n, changes in plans]
    out = []
    for index, values in enumerate(params):
        plan = session.space.plan_for(values, in_channels=session.data.in_channels,
                                      num_classes=session.data.num_classes)
        judged = [session.evaluate(plan, seed=seed) for seed in seeds]
        first = judged[0]
        out.append(Retrained(accuracy=[j.accuracy for j in judged], size_bytes=first.size_bytes,
                             latency_ratio=first.latency.ratio, latency_reused=first.latency_reused))
        if progress is not None:
            progress(index, out[-1])
    return out


def _changed(trial: optuna.trial.FrozenTrial, changes: Mapping[str, str]) -> dict[str, Any]:
    """``trial``'s parameters with ``changes`` (text naming a choice of the parameter's distribution)."""
    params = dict(trial.params)
    for name, text in changes.items():
        dist = trial.distributions.get(name)
        if dist is None:
            raise SqueezeError(f"trial {trial.number} has no parameter {name!r}; its parameters are "
                               f"{sorted(trial.params)}.")
        if not isinstance(dist, CategoricalDistribution):
            raise SqueezeError(f"parameter {name!r} of trial {trial.number} is not a categorical choice; "
                               f"only choices can be changed.")
        matches = [c for c in dist.choices if str(c) == text or _same_number(c, text)]
        if not matches:
            raise SqueezeError(f"{name}={text} is not a choice of trial {trial.number}'s parameter; "
                               f"the choices are {list(dist.choices)}.")
        params[name] = matches[0]
    return params


def _same_number(choice: Any, text: str) -> bool:
    if isinstance(choice, bool) or not isinstance(choice, (int, float)):
        return False
    try:
        return float(text) == float(choice)
    except ValueError:
        return False


def _spec(study_file: str | Path):
    if not Path(study_file).is_file():
        raise SqueezeError(f"{str(study_file)!r} is not a study file; give the .toml the study was created with.")
    return load_spec(str(study_file))
