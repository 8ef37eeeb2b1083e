"""Samplers: the registry of names a study file may use, and the default ``auto`` with its opening.

``make_sampler(name, seed=..., trials=...)`` builds any registered sampler, timed so that every
trial records ``sampler_ms`` and ``sampler``; :data:`SAMPLERS` lists the names (``squeeze list``
prints them). ``auto`` is :class:`AutoSampler`. Every study opens with the uniform references of
:func:`reference_params`; one that uses ``auto`` adds the anchors of :func:`anchor_params`. The
rules are in ``docs/samplers.md``.
"""

from ._auto import AutoSampler
from ._opening import anchor_params, reference_params
from ._optuna import startup_trials
from ._registry import SAMPLERS, make_sampler

__all__ = [
    "SAMPLERS",
    "AutoSampler",
    "anchor_params",
    "make_sampler",
    "reference_params",
    "startup_trials",
]
