"""Samplers by name, and ``auto``: TPE while it is cheap beside a trial, NSGA-II after.

Measured here with 25 categorical parameters and 3 objectives, multi-objective TPE costs about
19 ms a trial at 100 trials and 178 ms at 500; GP 0.4 s at 20 and 3 s at 100; NSGA-II about 1 ms.
``auto`` starts with TPE (the best of them on small budgets) and times itself: once its median
time over the last ``window`` trials passes ``share`` (5%) of the median trial's wall time, it
hands over to NSGA-II for the rest of the study. Its start-up phase (``startup_trials``) is not
random draws in the whole space: the study enqueues, after the uniform references, uniform anchors
spread over the student widths and sparsities (see ``_opening.anchor_params``), so that the model
starts from the axis along which uniform policies trade accuracy for size and speed, and searches
per-layer departures from it. After the start-up phase, half of its trials are local moves: one
parameter of a feasible front point moved one step, a uniform reference's shrinking moves first
while it is still on the front (see ``AutoSampler``). Every trial records the
sampler's own time as the user attribute ``sampler_ms`` and the sampler that proposed it as ``sampler``.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from squeeze.spaces import SqueezeError


def _tpe(seed: int, trials: int) -> BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials), multivariate=True,
                                      constant_liar=True)


def startup_trials(trials: int) -> int:
    """How many trials a model-based sampler takes before it models (a quarter of the budget, 5 to 20)."""
    return max(5, min(20, trials // 4))


def _population(trials: int) -> int:
    return max(8, min(50, trials // 4))


_SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": lambda seed, trials: optuna.samplers.NSGAIISampler(seed=seed, population_size=_population(trials)),
    "nsga3": lambda seed, trials: optuna.samplers.NSGAIIISampler(seed=seed, population_size=_population(trials)),
    "gp": lambda seed, trials: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=startup_trials(trials), warn_independent_sampling=False),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
}


def list_samplers() -> list[str]:
    """Sampler names a study file may use."""
    return ["auto", *_SAMPLERS]


def make_sampler(name: str, *, seed: int, trials: int) -> BaseSampler:
    """The sampler registered as ``name``, timed so that each trial records its cost."""
    if name == "auto":
        return AutoSampler(seed=seed, trials=trials)
    try:
        factory = _SAMPLERS[name]
    except KeyError:
        raise SqueezeError(f"`study.sampler` must be one of {list_samplers()}, but got {name!r}.") from None
    return TimedSampler(factory(seed, trials), name=name)


class TimedSampler(BaseSampler):
    """Delegates to ``inner`` and records its time per trial as ``sampler_ms``."""

    def __init__(self, inner: BaseSampler, *, name: str) -> None:
        self._inner = inner
        self._name = name
        self._spent: dict[int, float] = {}

    @property
    def current(self) -> BaseSampler:
        return self._inner

    @property
    def current_name(self) -> str:
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
        study._storage.set_trial_user_attr(trial._trial_id, "sampler_ms", round(spent * 1000, 3))
        study._storage.set_trial_user_attr(trial._trial_id, "sampler", self.current_name)
        self._observe(study, trial, spent)

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        """Hook for subclasses: called once per finished trial with the sampler's time."""

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


class AutoSampler(TimedSampler):
    """TPE until its own time passes ``share`` of the median trial time, then NSGA-II.

    After the start-up trials, a share ``local`` of the trials are local moves instead: one
    parameter of a point on the feasible front, moved one step (the next bit-width, sparsity or
    width up or down; a plan not tried yet). Trials of a study share one training seed, so a move's
    difference from its parent is the move's own, and a front point whose neighbour is better in
    one objective and no worse in the others is replaced; model-based proposals alone seldom come
    back to a front point's exact network. While a uniform reference is on the front, the moves
    go to it, and only ones that make it smaller: the study is there to beat the policies a
    person tries first. Such a trial records ``local_from`` (the parent trial) and ``local_move``.
    """

    def __init__(self, *, seed: int, trials: int, share: float = 0.05, window: int = 10, local: float = 0.5) -> None:
        super().__init__(_tpe(seed, trials), name="tpe")
        self._seed = seed
        self._trials = trials
        self._share = share
        self._window = window
        self._local = local
        self._rng = random.Random(seed)
        self._moves: dict[int, tuple[int, str]] = {}
        self._costs: list[float] = []
        self._durations: list[float] = []

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        def sample() -> dict[str, Any]:
            # An enqueued trial (a reference, an anchor, a retry) has its parameters already.
            fixed = "fixed_params" in trial.system_attrs
            move = None if fixed or self._rng.random() >= self._local else self._local_move(study, search_space)
            if move is None:
                return self.current.sample_relative(study, trial, search_space)
            parent, name, params = move
            self._moves[trial._trial_id] = (parent, name)
            return params

        return self._timed(trial._trial_id, sample)

    def _local_move(self, study: Study, space: dict[str, BaseDistribution]) -> tuple[int, str, dict[str, Any]] | None:
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < startup_trials(self._trials) or not space:
            return None
        # Optuna's front of completed trials, feasible ones only where the study sets constraints.
        front = [t for t in study.best_trials if set(space) <= set(t.params)]
        if not front:
            return None
        tried = {_key(t.params) for t in trials if t.state != TrialState.FAIL}
        refined = self._refine_reference(trials, front, space, tried)
        if refined is not None:
            return refined
        for _ in range(20):
            parent = self._rng.choice(front)
            name = self._rng.choice(sorted(space))
            value = _step(space[name], parent.params[name], self._rng)
            if value is None:
                continue
            move = _move(parent, space, name, value)
            if _key(move[2]) not in tried:
                return move
        return None

    def _refine_reference(self, trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial],
                          space: dict[str, BaseDistribution], tried: set[tuple]) -> tuple[int, str, dict[str, Any]] | None:
        """A shrinking move of a uniform reference that is still on the front, or None.

        References go first, the least tried first: the search is there to beat what a person tries
        first. Moves that keep the reference's network (one int8 layer to the next lower bit-width)
        go before the rest: the network's latency is shared (one measurement a network), the
        bytes drop, and accuracy alone decides whether the move dominates its parent.
        """
        references = [t for t in front if "reference" in t.user_attrs]
        if not references:
            return None
        tries = Counter(t.user_attrs.get("local_from") for t in trials)
        tries.update(parent for parent, _ in self._moves.values())
        for parent in sorted(references, key=lambda t: (tries[t.number], t.number)):
            fresh = [(_move(parent, space, name, value), same_network)
                     for name, value, same_network in _shrinking(space, parent.params)]
            fresh = [(move, same_network) for move, same_network in fresh if _key(move[2]) not in tried]
            if fresh:
                return self._rng.choice([m for m, same in fresh if same] or [m for m, _ in fresh])
        return None

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        move = self._moves.pop(trial._trial_id, None)
        if move is not None:
            study._storage.set_trial_user_attr(trial._trial_id, "local_from", move[0])
            study._storage.set_trial_user_attr(trial._trial_id, "local_move", move[1])
        super().after_trial(study, trial, state, values)

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        if self._name != "tpe":
            return
        self._costs.append(spent)
        if trial.datetime_start is not None:
            self._durations.append(time.time() - trial.datetime_start.timestamp())
        if len(self._costs) < self._window or not self._durations:
            return
        cost = statistics.median(self._costs[-self._window :])
        trial_time = statistics.median(self._durations[-self._window :])
        if cost > self._share * trial_time:
            self._inner = optuna.samplers.NSGAIISampler(seed=self._seed, population_size=_population(self._trials))
            self._name = "nsga2"


def _move(parent: FrozenTrial, space: dict[str, BaseDistribution], name: str, value: Any) -> tuple[int, str, dict[str, Any]]:
    """``parent``'s parameters with ``name`` set to ``value``: (parent trial, what moved, the parameters)."""
    params = {k: parent.params[k] for k in space} | {name: value}
    return parent.number, f"{name}: {parent.params[name]!r} -> {value!r}", params


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _neighbour(dist: BaseDistribution, value: Any, direction: int) -> Any:
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


def _step(dist: BaseDistribution, value: Any, rng: random.Random) -> Any:
    """A neighbour of ``value`` in ``dist``, up or down at random; None where there is none."""
    near = [v for v in (_neighbour(dist, value, -1), _neighbour(dist, value, 1)) if v is not None]
    return rng.choice(near) if near else None


_SHRINKS = {"bits": -1, "sparsity": 1, "student": -1}
"""Which way each parameter group makes a network smaller: fewer bits, more sparsity, a narrower or shallower student."""


def _shrinking(space: dict[str, BaseDistribution], params: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """One-step moves of ``params`` that make its network smaller, as (name, value, keeps the network).

    A move keeps the network when it lowers an int8 layer's bit-width (weights below 8 bits run on
    the same int8 kernels, see ``squeeze.objectives.latency_key``). Bit-widths mean nothing in a
    plan whose ``precision`` is ``"float"``, so they are not moved there.
    """
    moves = []
    for name in sorted(space):
        group = name.partition(".")[0]
        if group not in _SHRINKS or (group == "bits" and params.get("precision") == "float"):
            continue
        value = _neighbour(space[name], params[name], _SHRINKS[group])
        if value is not None:
            moves.append((name, value, group == "bits" and params[name] <= 8))
    return moves
