"""The wrapper that times a sampler: every trial records what proposing it cost, and who proposed it.

Rule: each trial records ``sampler_ms`` (the milliseconds the sampler spent on it, over all of
Optuna's calls into the sampler) and ``sampler`` (the name of the sampler that proposed it). Why: a
sampler's cost grows with the study (TPE's with its trials), and ``squeeze status`` shows it beside
the trial's own time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from .._attrs import TrialAttr


class TimedSampler(BaseSampler):
    """Delegates to ``inner`` and records its time per trial as ``sampler_ms``, and ``name`` as ``sampler``."""

    def __init__(self, inner: BaseSampler, *, name: str) -> None:
        self._inner = inner
        self._name = name
        self._spent: dict[int, float] = {}

    def _timed(self, trial_id: int, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._spent[trial_id] = self._spent.get(trial_id, 0.0) + time.perf_counter() - start

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._timed(trial._trial_id, lambda: self._inner.infer_relative_search_space(study, trial))

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._timed(trial._trial_id, lambda: self._inner.sample_relative(study, trial, search_space))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self._timed(
            trial._trial_id, lambda: self._inner.sample_independent(study, trial, param_name, param_distribution)
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._timed(trial._trial_id, lambda: self._inner.before_trial(study, trial))

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)
        spent = self._spent.pop(trial._trial_id, 0.0)
        study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.SAMPLER_MS, round(spent * 1000, 3))
        study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.SAMPLER, self._name)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
