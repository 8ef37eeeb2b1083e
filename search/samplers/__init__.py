"""Samplers: the registry of names a study file may use, and the uniform references every study opens with.

``make_sampler(name, seed=..., trials=...)`` builds any registered sampler, timed so that every
trial records ``sampler_ms`` and ``sampler``; :data:`SAMPLERS` lists the names (``squeeze list``
prints them). ``auto``, the default, is Optuna's TPE modelling each parameter alone. Every study opens with the
uniform references of :func:`reference_params`. The rules are in ``docs/samplers.md``.
"""

from ._opening import reference_params
from ._optuna import startup_trials
from ._registry import SAMPLERS, make_sampler

__all__ = [
    "SAMPLERS",
    "make_sampler",
    "reference_params",
    "startup_trials",
]
