"""Samplers by name: the names a study file may give as ``study.sampler``, and the one verb that builds them.

Rules:

- Every sampler is built timed (see ``_timed``), whatever its name. Why: every trial of every
  study then records its sampler's cost and name, and ``squeeze status`` can show them.
- ``auto``, the default, is Optuna's TPE modelling each parameter alone (``_optuna.tpe_independent``),
  and its trials record ``sampler = "auto"``. Why: it is the sampler the ablation across tasks supports
  best; the evidence is in ``docs/samplers.md`` and ``benchmarks/README.md``, and a study file that names
  ``auto`` follows it.
"""

from __future__ import annotations

from optuna.samplers import BaseSampler
from squeeze.spaces import SqueezeError

from ._optuna import OPTUNA_SAMPLERS, tpe_independent
from ._timed import TimedSampler

SAMPLERS: tuple[str, ...] = ("auto", *OPTUNA_SAMPLERS)
"""The sampler names a study file may use (``squeeze list`` prints them); ``auto`` is the default."""


def make_sampler(name: str, *, seed: int, trials: int) -> BaseSampler:
    """The sampler registered as ``name``, seeded, sized for a budget of ``trials``, and timed.

    Raises :class:`~squeeze.spaces.SqueezeError` naming the allowed names when ``name`` is not one.
    """
    if name == "auto":
        return TimedSampler(tpe_independent(seed, trials), name="auto")
    try:
        factory = OPTUNA_SAMPLERS[name]
    except KeyError:
        raise SqueezeError(f"`study.sampler` must be one of {list(SAMPLERS)}, but got {name!r}.") from None
    return TimedSampler(factory(seed, trials), name=name)
