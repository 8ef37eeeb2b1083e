"""Local moves: a front point changed a step at a time, as one tunes a policy by hand.

A move is one or two steps (a parameter from one value to the next in its order). ``auto`` uses
them after its start-up trials (see ``AutoSampler``): trials of a study share one training seed,
so the difference between a move and its parent is the move's own, and the study learns from it.
Every move trial records its parent (``local_from``), its steps (``local_steps``: a list of
``[parameter, from, to]``), a line for people (``local_move``) and whether it moved a uniform
reference or any front point (``local_kind``: ``"reference"`` or ``"front"``).

Three kinds of move are there to beat a uniform reference:

- **Shrinking moves** (:func:`shrinking`): one step that makes the network smaller (fewer bits,
  more sparsity, a narrower or shallower student).
- **Bit trades** (:func:`bit_trades`): one int8 layer a step up and another a step down, where the
  bytes fall. Both stay at 8 bits or fewer, so the network, its int8 kernels and its latency are the
  parent's; the trade moves precision to where it buys accuracy (a small, sensitive first layer up,
  a large, tolerant one down), which a uniform policy cannot do. The bytes come from the parent's
  ``weights`` attribute (weights kept per layer, recorded by every trial).
- **End trades** (:func:`end_trades`): the first and the last int8 layers a step up together and
  one layer between them a step down, where the bytes fall: the oldest rule of mixed precision
  (keep the ends precise), which a trade of one layer for another cannot reach in one move.

:func:`step_effects` is what the study has learnt so far: the mean accuracy change of each step
over the moves that took it (:func:`latency_effects` the same for latency); :func:`predicted`
expects a step not taken yet to do what the same kind of step did on other layers, shrunk towards 0
by how few layers have taken it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

Step = tuple[str, Any, Any]
"""(parameter, from, to)."""


@dataclass(frozen=True)
class Move:
    """A proposal: ``parent``'s parameters with ``steps`` applied."""

    parent: int
    steps: tuple[Step, ...]
    params: dict[str, Any]
    same_network: bool = False
    """True when the moved plan runs the parent's network (bit-widths moved among int8 layers only)."""
    kind: str = "front"
    """``"front"`` for a move of any front point, ``"reference"`` for one that makes a uniform reference smaller."""

    @property
    def label(self) -> str:
        return ", ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in self.steps)


def make_move(parent: FrozenTrial, space: Mapping[str, BaseDistribution], steps: Sequence[Step], *,
              same_network: bool = False) -> Move:
    """``parent``'s parameters (those of ``space``) with each step's new value."""
    params = {k: parent.params[k] for k in space} | {name: new for name, _, new in steps}
    return Move(parent.number, tuple(steps), params, same_network)


def key(params: Mapping[str, Any]) -> tuple:
    """A hashable form of a parameter set, to tell whether a plan has been tried."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def neighbour(dist: BaseDistribution, value: Any, direction: int) -> Any:
    """The next choice above (``direction`` 1) or below (-1) ``value``; None at the end or where there is no order.

    A choice without an order (``precision``: per-layer or every layer in float) is no small step,
    so local moves leave it to the model.
    """
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        if len(choices) < 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            return None
        ordered = sorted(choices)
        j = ordered.index(value) + direction
        return ordered[j] if 0 <= j < len(ordered) else None
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        v = value + direction * (dist.step or (dist.high - dist.low) / 4)
        if not dist.low <= v <= dist.high:
            return None
        return round(v, 10) if isinstance(dist, FloatDistribution) else int(v)
    return None


SHRINKS = {"bits": -1, "sparsity": 1, "student": -1}
"""Which way each parameter group makes a network smaller: fewer bits, more sparsity, a narrower or shallower student."""


def _bits_moved(params: Mapping[str, Any]) -> bool:
    # Bit-widths mean nothing in a plan whose ``precision`` is ``"float"``.
    return params.get("precision") != "float"


def one_steps(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """Every move of ``parent`` that takes one parameter one step up or down.

    Bit-widths are left alone in a plan that runs every layer in float, where they change nothing.
    """
    params = parent.params
    moves = []
    for name in sorted(space):
        if name.partition(".")[0] == "bits" and not _bits_moved(params):
            continue
        for direction in (-1, 1):
            value = neighbour(space[name], params[name], direction)
            if value is not None:
                moves.append(make_move(parent, space, [(name, params[name], value)]))
    return moves


def shrinking(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """One-step moves of ``parent`` that make its network smaller (see :data:`SHRINKS`).

    A move keeps the network when it lowers an int8 layer's bit-width (weights below 8 bits run on
    the same int8 kernels, see ``squeeze.objectives.latency_key``).
    """
    moves = []
    for move in one_steps(space, parent):
        (step,) = move.steps
        if _shrinks(step):
            name, old, _ = step
            moves.append(replace(move, same_network=name.partition(".")[0] == "bits" and old <= 8))
    return moves


def bit_trades(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """Moves of ``parent`` that take one int8 layer a bit-width up and another one down, where the bytes fall.

    Needs the parent's ``weights`` attribute (weights per layer); without it there are none.
    """
    weights = parent.user_attrs.get("weights")
    params = parent.params
    if not isinstance(weights, Mapping) or not _bits_moved(params):
        return []
    up, down = {}, {}
    for name in sorted(space):
        group, _, layer = name.partition(".")
        if group != "bits" or layer not in weights or params[name] > 8:
            continue
        for direction, into in ((1, up), (-1, down)):
            value = neighbour(space[name], params[name], direction)
            if value is not None and value <= 8:
                into[name] = (value, weights[layer] * (value - params[name]))
    return [
        make_move(parent, space, [(a, params[a], up[a][0]), (b, params[b], down[b][0])], same_network=True)
        for a in up for b in down if a != b and up[a][1] + down[b][1] < 0
    ]


def end_trades(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """Moves of ``parent`` that take its first and last int8 layers a bit-width up and one between them down, where the bytes fall.

    The layers' order is that of the parent's ``weights`` attribute (the network's own); without
    it, or with fewer than three int8 layers, or with an end that cannot go up and stay at 8 bits
    or fewer, there are none. Measured over eight training seeds a plan on the search-quality
    benchmark's CNN (``benchmarks/results/reference_moves.md``), the uniform 4-bit reference at
    sparsity 0 with its first and last layers at 8 bits and its largest at 3 was ahead on the mean
    on all three seeds (+0.0001, +0.0017, +0.0017), where the largest layer at 3 bits alone was not;
    at sparsity 0.5, +0.0062, +0.0018 and +0.0012. At sparsity 0 the gain is near the noise: in a
    search-quality run it was +0.0008, -0.0006 and -0.0005 over five seeds.
    """
    weights = parent.user_attrs.get("weights")
    params = parent.params
    if not isinstance(weights, Mapping) or not _bits_moved(params):
        return []
    layers = [layer for layer in weights if f"bits.{layer}" in space and params[f"bits.{layer}"] <= 8]
    if len(layers) < 3:
        return []
    ups = []
    for layer in (layers[0], layers[-1]):
        name = f"bits.{layer}"
        value = neighbour(space[name], params[name], 1)
        if value is None or value > 8:
            return []
        ups.append(((name, params[name], value), weights[layer] * (value - params[name])))
    raised = sum(extra for _, extra in ups)
    moves = []
    for layer in layers[1:-1]:
        name = f"bits.{layer}"
        value = neighbour(space[name], params[name], -1)
        if value is not None and raised + weights[layer] * (value - params[name]) < 0:
            steps = [step for step, _ in ups] + [(name, params[name], value)]
            moves.append(make_move(parent, space, steps, same_network=True))
    return moves


def bits_saved(move: Move, weights: Mapping[str, int]) -> int:
    """The weight-bits ``move``'s bit-width steps save (negative where they add), from the layers' ``weights``.

    Among reference moves the study knows nothing against, the one that saves most goes first: the
    largest layers lose least a step down (on the search-quality benchmark's CNN, the uniform 4-bit
    reference's end trade lost 0.0070 and 0.0055 under the study's seed with its third layer at 3
    bits, where with its largest layer at 3 bits it was ahead on the mean of eight training seeds).
    """
    total = 0
    for name, old, new in move.steps:
        group, _, layer = name.partition(".")
        if group == "bits" and isinstance(weights.get(layer), int):
            total += weights[layer] * (old - new)
    return total


def _shrinks(step: Step) -> bool:
    """Whether ``step`` makes the network smaller (see :data:`SHRINKS`)."""
    name, old, new = step
    return (new - old) * SHRINKS.get(name.partition(".")[0], 0) > 0


def step_effects(trials: Sequence[FrozenTrial], *, objective: int) -> dict[Step, float]:
    """The mean change of objective ``objective`` (accuracy) that each step brought, over the moves that took it.

    A move of two steps (a trade: one layer up, one down) cannot tell its halves apart, so what it
    lost goes to its shrinking step and what it gained to the other: fewer bits, more sparsity or a
    narrower student do not make a network more accurate, more bits do not make it less, and a trade
    whose down half breaks the network (a convolution at 2 bits) then counts against that layer
    only. A move stopped early (it fell far below the accuracy budget) counts as having lost its
    parent's whole value.
    """
    by_number = {t.number: t for t in trials}
    seen: dict[Step, list[float]] = defaultdict(list)
    for t in trials:
        steps = [tuple(step) for step in t.user_attrs.get("local_steps") or ()]
        parent = by_number.get(t.user_attrs.get("local_from"))
        if not steps or parent is None or parent.values is None:
            continue
        if t.state == TrialState.COMPLETE:
            change = t.values[objective] - parent.values[objective]
        elif t.state == TrialState.PRUNED:
            change = -parent.values[objective]
        else:
            continue
        blamed = [step for step in steps if _shrinks(step) == (change < 0)] or steps
        for step in blamed:
            seen[step].append(change / len(blamed))
    return {step: statistics.fmean(changes) for step, changes in seen.items()}


def latency_effects(trials: Sequence[FrozenTrial], *, objective: int) -> dict[Step, float]:
    """The mean change of objective ``objective`` (latency) that each one-step move brought.

    Only moves of one step that finished count: a two-step move here is a bit trade, which keeps
    its parent's network and so its latency, and a move stopped early was never timed. Fewer
    channels are not always faster: on an Intel Xeon with AVX-512 VNNI, the search-quality
    benchmark's full-width 4-bit reference read 0.324x and the same plan with its 16-channel first
    stage narrowed to 12 channels 0.362x; a move slower than the reference it shrinks cannot beat it.
    """
    by_number = {t.number: t for t in trials}
    seen: dict[Step, list[float]] = defaultdict(list)
    for t in trials:
        steps = t.user_attrs.get("local_steps") or ()
        parent = by_number.get(t.user_attrs.get("local_from"))
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

    A step the study has not taken yet is expected to do what the same kind of step (the same
    group, from the same value to the same value) did on the other layers, on average, shrunk
    towards 0 as if one more layer had taken it and changed nothing: ``n / (n + 1)`` of the mean
    of ``n`` layers' effects; 0 where no layer has taken one. One convolution broken at 2 bits
    (half a network's accuracy and more) then still keeps the next moves off 2 bits until
    something else has been tried, while one draw of a tie does not speak for every layer: in
    one run of the search-quality benchmark, a classifier taken from 4 to 3 bits lost 0.014 on
    the study's one draw, and every end trade of the uniform 4-bit references (each holds a step
    from 4 to 3 bits) was then expected to lose as much and never tried.
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
