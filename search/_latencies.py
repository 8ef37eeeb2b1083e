"""A study's latency measurements, one per network that runs.

Two trials whose plans materialize the same network (the same student and kept channels, the same
layers in int8; see :func:`squeeze.objectives.latency_key`) run the same kernels on the same shapes,
so they have one latency. Timing each of them would give two draws of the machine's noise, and a
front would then call one faster than the other when neither is; a uniform 4-bit plan and its 8-bit
twin, for example, read 0.431x and 0.426x. So a network is timed once per study, in the first trial
that builds it, and later trials take that measurement (recorded as ``latency_reused`` and
``latency_from_trial``). Workers find each other's measurements through the study's storage.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from squeeze.objectives import Latency
from ._attrs import TrialAttr


class LatencyBook:
    """Latency measurements of a study's completed trials, by network key."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, Latency]] = {}

    def measured(self, study: optuna.Study, key: str) -> Latency | None:
        """The measurement of the network ``key`` by the earliest completed trial that has one, or None."""
        if key not in self._known:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                attrs = trial.user_attrs
                if attrs.get(TrialAttr.LATENCY_KEY) == key and isinstance(attrs.get(TrialAttr.LATENCY), dict):
                    self._known[key] = (trial.number, Latency(**attrs[TrialAttr.LATENCY]))
                    break
        found = self._known.get(key)
        return found[1] if found else None

    def measured_in(self, key: str) -> int:
        """The trial whose measurement :meth:`measured` returned for ``key``."""
        return self._known[key][0]
