"""Samplers by name, and ``auto``: TPE while it is cheap beside a trial, NSGA-II after.

Measured here with 25 categorical parameters and 3 objectives, multi-objective TPE costs about
19 ms a trial at 100 trials and 178 ms at 500; GP 0.4 s at 20 and 3 s at 100; NSGA-II about 1 ms.
``auto`` starts with TPE (the best of them on small budgets) and times itself: once its median
time over the last ``window`` trials passes ``share`` (5%) of the median trial's wall time, it
hands over to NSGA-II for the rest of the study. Its start-up phase (``startup_trials``) is not
random draws in the whole space: the study enqueues, after the uniform references, uniform anchors
spread over the student widths and sparsities (see ``_study.anchor_params``), so that the model
starts from the axis along which uniform policies trade accuracy for size and speed, and searches
per-layer departures from it. Every trial records the sampler's own time as
the user attribute ``sampler_ms`` and the sampler that proposed it as ``sampler``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from squeeze.spaces import SqueezeError


def _tpe(seed: int, trials: int) -> BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials), multivariate=True,
                                      constant_liar=True)


def startup_trials(trials: int) -> int:
    """How many trials a model-based sampler takes before it models (a quarter of the budget, 5 to 20)."""
    return max(5, min(20, trials // 4))


def _population(trials: int) -> int:
    return max(8, min(50, trials // 4))


_SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": lambda seed, trials: optuna.samplers.NSGAIISampler(seed=seed, population_size=_population(trials)),
    "nsga3": lambda seed, trials: optuna.samplers.NSGAIIISampler(seed=seed, population_size=_population(trials)),
    "gp": lambda seed, trials: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=startup_trials(trials), warn_independent_sampling=False),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
}


def list_samplers() -> list[str]:
    """Sampler names a study file may use."""
    return ["auto", *_SAMPLERS]


def make_sampler(name: str, *, seed: int, trials: int) -> BaseSampler:
    """The sampler registered as ``name``, timed so that each trial records its cost."""
    if name == "auto":
        return AutoSampler(seed=seed, trials=trials)
    try:
        factory = _SAMPLERS[name]
    except KeyError:
        raise SqueezeError(f"`study.sampler` must be one of {list_samplers()}, but got {name!r}.") from None
    return TimedSampler(factory(seed, trials), name=name)


class TimedSampler(BaseSampler):
    """Delegates to ``inner`` and records its time per trial as ``sampler_ms``."""

    def __init__(self, inner: BaseSampler, *, name: str) -> None:
        self._inner = inner
        self._name = name
        self._spent: dict[int, float] = {}

    @property
    def current(self) -> BaseSampler:
        return self._inner

    @property
    def current_name(self) -> str:
        return self._name

    def _timed(self, trial_id: int, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._spent[trial_id] = self._spent.get(trial_id, 0.0) + time.perf_counter() - start

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._timed(trial._trial_id, lambda: self.current.infer_relative_search_space(study, trial))

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._timed(trial._trial_id, lambda: self.current.sample_relative(study, trial, search_space))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self._timed(
            trial._trial_id, lambda: self.current.sample_independent(study, trial, param_name, param_distribution)
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._timed(trial._trial_id, lambda: self.current.before_trial(study, trial))

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.current.after_trial(study, trial, state, values)
        spent = self._spent.pop(trial._trial_id, 0.0)
        study._storage.set_trial_user_attr(trial._trial_id, "sampler_ms", round(spent * 1000, 3))
        study._storage.set_trial_user_attr(trial._trial_id, "sampler", self.current_name)
        self._observe(study, trial, spent)

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        """Hook for subclasses: called once per finished trial with the sampler's time."""

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


class AutoSampler(TimedSampler):
    """TPE until its own time passes ``share`` of the median trial time, then NSGA-II."""

    def __init__(self, *, seed: int, trials: int, share: float = 0.05, window: int = 10) -> None:
        super().__init__(_tpe(seed, trials), name="tpe")
        self._seed = seed
        self._trials = trials
        self._share = share
        self._window = window
        self._costs: list[float] = []
        self._durations: list[float] = []

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        if self._name != "tpe":
            return
        self._costs.append(spent)
        if trial.datetime_start is not None:
            self._durations.append(time.time() - trial.datetime_start.timestamp())
        if len(self._costs) < self._window or not self._durations:
            return
        cost = statistics.median(self._costs[-self._window :])
        trial_time = statistics.median(self._durations[-self._window :])
        if cost > self._share * trial_time:
            self._inner = optuna.samplers.NSGAIISampler(seed=self._seed, population_size=_population(self._trials))
            self._name = "nsga2"
