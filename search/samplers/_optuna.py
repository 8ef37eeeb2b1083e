"""Optuna's samplers, built for a study's trial budget.

Rules:

- A model-based sampler (TPE, GP) draws at random for its first :func:`startup_trials`: a quarter
  of the budget, 5 to 20. Why: the model needs points to fit, and three quarters of the budget are
  left to use it.
- A genetic sampler (NSGA-II, NSGA-III) breeds populations of :func:`population_size`: a quarter
  of the budget, 8 to 50. Why: the budget then holds about four generations.
- ``tpe`` is multi-objective, multivariate (the per-layer knobs modelled together) and uses a constant liar.
  Why: workers running side by side then do not all propose the same plan.
- :func:`tpe_independent` (the default, ``auto``) models each parameter alone, with the same start-up
  trials and constant liar. Why: with a few dozen trials and a parameter or two per layer, one density
  per parameter is fitted from every trial, where the joint one is fitted poorly; the ablation across
  tasks (``docs/samplers.md``) found it ahead of the joint model and of random search.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.samplers import BaseSampler


def startup_trials(trials: int) -> int:
    """How many trials a model-based sampler takes before it models (a quarter of the budget, 5 to 20)."""
    return max(5, min(20, trials // 4))


def population_size(trials: int) -> int:
    """The population of a genetic sampler (a quarter of the budget, 8 to 50)."""
    return max(8, min(50, trials // 4))


def tpe(seed: int, trials: int) -> BaseSampler:
    """Multi-objective TPE, multivariate, with a constant liar for parallel workers."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials), multivariate=True,
                                      constant_liar=True)


def tpe_independent(seed: int, trials: int) -> BaseSampler:
    """Multi-objective TPE that models each parameter alone, with a constant liar for parallel workers."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials), multivariate=False,
                                      constant_liar=True)


def nsga2(seed: int, trials: int) -> BaseSampler:
    """NSGA-II with a population sized by the budget."""
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size(trials))


OPTUNA_SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {
    "tpe": tpe,
    "nsga2": nsga2,
    "nsga3": lambda seed, trials: optuna.samplers.NSGAIIISampler(seed=seed, population_size=population_size(trials)),
    "gp": lambda seed, trials: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=startup_trials(trials), warn_independent_sampling=False),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
}
"""Name -> factory ``(seed, trials) -> sampler`` of each Optuna sampler a study file may name."""
