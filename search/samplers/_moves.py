"""Local moves: a tried plan changed a step at a time, as one tunes a policy by hand.

A *step* takes one parameter from its value to the next one in its order (``(parameter, from,
to)``); a *move* is a parent trial's parameters with one to three steps applied. Rules:

- **One-step moves** (:func:`one_steps`) take any ordered parameter one step up or down. A choice
  without an order (``precision``) is left to the model; bit-widths are left alone in a plan that
  runs every layer in float. Why: an unordered choice has no small step, and bit-widths change
  nothing in a float plan.
- **Shrinking moves** (:func:`shrinking`) are the one-step moves that make the network smaller:
  fewer bits, more sparsity, a narrower or shallower student (:data:`SHRINKS`). Why: a move of a
  uniform reference must be smaller to beat it.
- **Bit trades** (:func:`bit_trades`) take one int8 layer a bit-width up and another one down,
  where the bytes fall. Why: the network and its latency stay the parent's, and precision moves to
  where it buys accuracy, which no uniform policy can do.
- **End trades** (:func:`end_trades`) take the first and the last int8 layers up together and one
  layer between them down, where the bytes fall. Why: keeping the ends precise is the oldest rule
  of mixed precision, and a trade of two layers cannot reach it in one move.
- A move that keeps the parent's network is marked ``same_network``: bit-widths moved among layers
  at 8 bits or fewer. Why: weights below 8 bits run on the same int8 kernels, so its latency is the
  parent's (one measurement a network).

Trades count bytes from the parent's ``weights`` attribute (weights kept per layer, in the
network's order), which every trial records; a parent without it has no trades.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from squeeze.spaces import runs_int8
from .._attrs import TrialAttr

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
        """The steps as a line for people, recorded as ``local_move``: ``bits.fc: 8 -> 4``."""
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

    A categorical choice has an order when all its choices are numbers; a float or integer range
    steps by its ``step``, or by a quarter of its width.
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
        if shrinks(step):
            name, old, _ = step
            moves.append(replace(move, same_network=name.partition(".")[0] == "bits" and runs_int8(old)))
    return moves


def bit_trades(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """Moves of ``parent`` that take one int8 layer a bit-width up and another one down, where the bytes fall.

    Both layers stay at 8 bits or fewer, so the moved plan runs the parent's network. Needs the
    parent's ``weights`` attribute (weights per layer); without it there are none.
    """
    weights = parent.user_attrs.get(TrialAttr.WEIGHTS)
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
            if value is not None and runs_int8(value):
                into[name] = (value, weights[layer] * (value - params[name]))
    return [
        make_move(parent, space, [(a, params[a], up[a][0]), (b, params[b], down[b][0])], same_network=True)
        for a in up for b in down if a != b and up[a][1] + down[b][1] < 0
    ]


def end_trades(space: Mapping[str, BaseDistribution], parent: FrozenTrial) -> list[Move]:
    """Moves of ``parent`` that take its first and last int8 layers a bit-width up and one between them down, where the bytes fall.

    The layers' order is that of the parent's ``weights`` attribute (the network's own). There are
    none without it, with fewer than three int8 layers, or with an end that cannot go up and stay at
    8 bits or fewer (a single trade covers that case). Why: keeping the ends precise is the oldest
    rule of mixed precision; see ``benchmarks/sampler_evidence.md`` for what it won.
    """
    weights = parent.user_attrs.get(TrialAttr.WEIGHTS)
    params = parent.params
    if not isinstance(weights, Mapping) or not _bits_moved(params):
        return []
    layers = [layer for layer in weights if f"bits.{layer}" in space and runs_int8(params[f"bits.{layer}"])]
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

    Float counts as 32 bits; a layer without a weight count adds nothing. ``auto`` ranks reference
    moves it knows nothing against by this: the largest layer a step down first, as the largest
    layers lose least.
    """
    total = 0
    for name, old, new in move.steps:
        group, _, layer = name.partition(".")
        if group == "bits" and isinstance(weights.get(layer), int):
            total += weights[layer] * (old - new)
    return total


def shrinks(step: Step) -> bool:
    """Whether ``step`` makes the network smaller (see :data:`SHRINKS`)."""
    name, old, new = step
    return (new - old) * SHRINKS.get(name.partition(".")[0], 0) > 0
