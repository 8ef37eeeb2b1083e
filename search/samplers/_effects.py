"""What a study has learnt from its local moves: each step's effect on accuracy and on latency.

Trials of a study share one training seed, so the difference between a move and its parent is the
move's own. Rules:

- A step's effect (:func:`step_effects`) is the mean accuracy change of the moves that took it.
  A two-step trade's loss goes to its shrinking step, its gain to the other. Why: fewer bits, more
  sparsity or a narrower student do not make a network more accurate, and more bits do not make it
  less; so a trade whose lower half breaks the network counts against that layer only.
- A move stopped early counts as having lost its parent's whole accuracy. Why: it fell far below
  the accuracy budget, and it has no measured value.
- A step's latency effect (:func:`latency_effects`) counts finished one-step moves only. Why: a
  trade keeps its parent's network and so its latency, and a stopped move was never timed.
- A step not taken yet is expected (:func:`predicted`) to do what the same kind of step (the same
  group, from the same value to the same value) did on other layers, shrunk towards no change as if
  one more layer had taken it and changed nothing: ``n / (n + 1)`` of the mean of ``n`` layers.
  Why: one layer broken at 2 bits should still keep the next moves off 2 bits, while one draw of a
  tie should not speak for every layer.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

from ._moves import Move, Step, shrinks
from .._attrs import TrialAttr


def step_effects(trials: Sequence[FrozenTrial], *, objective: int) -> dict[Step, float]:
    """The mean change of objective ``objective`` (accuracy) that each step brought, over the moves that took it.

    A move of two steps (a trade: one layer up, one down) cannot tell its halves apart, so what it
    lost goes to its shrinking step and what it gained to the other. A move stopped early counts as
    having lost its parent's whole value.
    """
    by_number = {t.number: t for t in trials}
    seen: dict[Step, list[float]] = defaultdict(list)
    for t in trials:
        steps = [tuple(step) for step in t.user_attrs.get(TrialAttr.LOCAL_STEPS) or ()]
        parent = by_number.get(t.user_attrs.get(TrialAttr.LOCAL_FROM))
        if not steps or parent is None or parent.values is None:
            continue
        if t.state == TrialState.COMPLETE:
            change = t.values[objective] - parent.values[objective]
        elif t.state == TrialState.PRUNED:
            change = -parent.values[objective]
        else:
            continue
        blamed = [step for step in steps if shrinks(step) == (change < 0)] or steps
        for step in blamed:
            seen[step].append(change / len(blamed))
    return {step: statistics.fmean(changes) for step, changes in seen.items()}


def latency_effects(trials: Sequence[FrozenTrial], *, objective: int) -> dict[Step, float]:
    """The mean change of objective ``objective`` (latency) that each one-step move brought.

    Only moves of one step that finished count. Why it is kept: fewer channels are not always
    faster on int8 kernels, and a move slower than the reference it shrinks cannot beat it.
    """
    by_number = {t.number: t for t in trials}
    seen: dict[Step, list[float]] = defaultdict(list)
    for t in trials:
        steps = t.user_attrs.get(TrialAttr.LOCAL_STEPS) or ()
        parent = by_number.get(t.user_attrs.get(TrialAttr.LOCAL_FROM))
        if len(steps) != 1 or t.state != TrialState.COMPLETE or parent is None or parent.values is None:
            continue
        seen[tuple(steps[0])].append(t.values[objective] - parent.values[objective])
    return {step: statistics.fmean(changes) for step, changes in seen.items()}


def _kind(step: Step) -> tuple:
    # The same change of value in the same group (bits 4 -> 2, sparsity 0 -> 0.25) on any layer.
    name, old, new = step
    return name.partition(".")[0], old, new


def predicted(move: Move, effects: Mapping[Step, float]) -> float:
    """The change ``move`` is expected to bring (of accuracy, or of latency): the sum of its steps' effects so far.

    A step the study has not taken yet is expected to do ``n / (n + 1)`` of the mean effect of the
    ``n`` layers that took the same kind of step; 0 where no layer has taken one.
    """
    kinds: dict[tuple, list[float]] = defaultdict(list)
    for step, effect in effects.items():
        kinds[_kind(step)].append(effect)
    total = 0.0
    for step in move.steps:
        if step in effects:
            total += effects[step]
        elif _kind(step) in kinds:
            seen = kinds[_kind(step)]
            total += sum(seen) / (len(seen) + 1)
    return total
