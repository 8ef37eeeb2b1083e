"""The wrapper that times a sampler: every trial records what proposing it cost, and who proposed it.

Rule: each trial records ``sampler_ms`` (the milliseconds the sampler spent on it, over all of
Optuna's calls into the sampler) and ``sampler`` (the name of the sampler that proposed it). Why: a
sampler's cost grows with the study, and ``squeeze status`` shows it beside the trial's own time;
``auto`` reads the same figure to decide when to leave TPE.
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
    """Delegates to ``inner`` and records its time per trial as ``sampler_ms``, and ``name`` as ``sampler``.

    Subclasses may swap the sampler they delegate to (``_inner``, named ``_name``) and hear of each
    finished trial's cost through :meth:`_observe`.
    """

    def __init__(self, inner: BaseSampler, *, name: str) -> None:
        self._inner = inner
        self._name = name
        self._spent: dict[int, float] = {}

    @property
    def current(self) -> BaseSampler:
        """The sampler that proposes trials now."""
        return self._inner

    @property
    def current_name(self) -> str:
        """Its name, as trials record it."""
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
        study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.SAMPLER_MS, round(spent * 1000, 3))
        study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.SAMPLER, self.current_name)
        self._observe(study, trial, spent)

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        """Hook for subclasses: called once per finished trial with the sampler's time."""

    def reseed_rng(self) -> None:
        self.current.reseed_rng()
