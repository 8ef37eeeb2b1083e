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
parameter of a feasible front point moved one step (a point is picked by the hypervolume it
alone holds, see ``_parent_weights``). While a feasible uniform reference has moves left, three in
four of the model's turns (three in eight trials) go to moves that make a reference smaller instead: a
step down, or bits traded between its layers (see ``AutoSampler`` and ``_local``). Every trial
records the sampler's own time as the user attribute ``sampler_ms`` and the sampler that proposed
it as ``sampler``.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from squeeze.spaces import SqueezeError

from ._local import Move, bit_trades, bits_saved, end_trades, key, latency_effects, one_steps, predicted, shrinking, step_effects
from ._pareto import Point, Teacher, _dominates, contributions


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


def _parent_weights(study: Study, front: Sequence[FrozenTrial], tries: Counter) -> list[float] | None:
    """How likely each front point is to be the next move's parent; None for all alike.

    In a study of squeeze's three objectives with a known teacher, a point's weight is the
    hypervolume it alone holds (see ``squeeze.search._pareto.contributions``: the study's own
    measure) over one plus the moves it has had: a move from the point that holds the most of the
    front can add the most, and one moved often without being replaced gives way to the next.
    """
    attrs = study.user_attrs
    if attrs.get("objectives") != ["accuracy", "size_bytes", "latency_ratio"] or not attrs.get("teacher_bytes"):
        return None
    teacher = Teacher(accuracy=attrs.get("teacher_accuracy", 1.0), size_bytes=attrs["teacher_bytes"])
    points = [Point(number=t.number, accuracy=t.values[0], size_bytes=int(t.values[1]), latency_ratio=t.values[2])
              for t in front]
    weights = [share / (1 + tries[t.number]) for t, share in zip(front, contributions(points, teacher=teacher))]
    return weights if sum(weights) > 0 else None


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


def _feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values())


def _beaten(reference: FrozenTrial, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> bool:
    """Whether a feasible trial of ``trials`` is at least as good as ``reference`` in every objective and better in one."""
    def minimised(t: FrozenTrial) -> tuple[float, ...]:
        return tuple(-v if d == StudyDirection.MAXIMIZE else v for d, v in zip(directions, t.values))

    mine = minimised(reference)
    return any(_dominates(minimised(t), mine) for t in trials if _feasible(t) and t.number != reference.number)


class AutoSampler(TimedSampler):
    """TPE until its own time passes ``share`` of the median trial time, then NSGA-II.

    After the start-up trials, a share ``local`` of the trials are local moves instead: one
    parameter of a point on the feasible front, moved one step (the next bit-width, sparsity or
    width up or down; a plan not tried yet). The point is drawn by the hypervolume it alone holds,
    over one plus the moves it has had (see ``_parent_weights``). Trials of a study share one
    training seed, so a move's difference from its parent is the move's own, and a front point
    whose neighbour is better in one objective and no worse in the others is replaced;
    model-based proposals alone seldom come back to a front point's exact network.

    While a feasible uniform reference has moves left, a share ``refine_share`` of the model's turns
    (three in four: three trials in eight) are moves that make a reference smaller instead, at most
    ``refine`` a reference (front moves that drew it as their parent do not count), and only moves
    that the study so far does not expect to lose (see ``_refine_reference``): the study is
    there to beat the policies a person tries first. A reference that the study's draw has
    already dropped off the front keeps its moves: every trial trains under the study's one seed,
    and in one run of the search-quality benchmark a reference that drew 0.926 (0.941 averaged over
    five training seeds) fell to plans that averaged a point below it, while the end trade that
    beats such references on average was never tried. They come out of the model's turns, not the
    front's moves, because the front's moves carry the hypervolume: where the references sit far
    from the fast end of the front (a machine on which int8 kernels are no faster than float), the
    moves they took from the front cost one run of the search-quality benchmark 0.095 of mean
    hypervolume (2.2902 against 2.3851 without reference moves). Once no reference is left to
    move, the model has its turns again. A move records ``local_from`` (the parent trial),
    ``local_steps``, ``local_move`` and ``local_kind`` (see ``squeeze.search._local``).
    """

    def __init__(self, *, seed: int, trials: int, share: float = 0.05, window: int = 10, local: float = 0.5,
                 refine_share: float = 0.75, refine: int = 8, hopeless: float = 0.01) -> None:
        if not (0.0 <= local <= 1.0 and 0.0 <= refine_share <= 1.0):
            raise ValueError(f"`local` and `refine_share` are shares and must be in [0, 1], "
                             f"but got ({local=}, {refine_share=}).")
        super().__init__(_tpe(seed, trials), name="tpe")
        self._seed = seed
        self._trials = trials
        self._share = share
        self._window = window
        self._local = local
        self._refine_share = refine_share
        self._refine = refine
        self._hopeless = hopeless
        self._rng = random.Random(seed)
        # Whose turn a trial is comes from its own stream, so what the moves draw does not shift it.
        self._turns = random.Random(f"{seed}:turns")
        self._moves: dict[int, Move] = {}
        self._costs: list[float] = []
        self._durations: list[float] = []

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        def sample() -> dict[str, Any]:
            # An enqueued trial (a reference, an anchor, a retry) has its parameters already.
            move = None
            if "fixed_params" not in trial.system_attrs:
                turn = self._turns.random()
                if turn < self._local:
                    move = self._local_move(study, search_space, references=False)
                elif turn < self._local + (1.0 - self._local) * self._refine_share:
                    move = self._local_move(study, search_space, references=True)
            if move is None:
                return self.current.sample_relative(study, trial, search_space)
            self._moves[trial._trial_id] = move
            return move.params

        return self._timed(trial._trial_id, sample)

    def _local_move(self, study: Study, space: dict[str, BaseDistribution], *, references: bool) -> Move | None:
        """A move of a front point (``references=False``) or of a feasible uniform reference, or None."""
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < startup_trials(self._trials) or not space:
            return None
        # Optuna's front of completed trials, feasible ones only where the study sets constraints.
        front = [t for t in study.best_trials if set(space) <= set(t.params)]
        if not front:
            return None
        tried = {key(t.params) for t in trials if t.state != TrialState.FAIL}
        if references:
            # A reference's budget counts its own turns' moves, not the front moves that drew it as a
            # parent (the most accurate reference holds much of the front and is drawn often).
            # A move recorded before moves had kinds counts as the reference's.
            refined = Counter(t.user_attrs.get("local_from") for t in trials
                              if t.user_attrs.get("local_kind", "reference") == "reference")
            refined.update(move.parent for move in self._moves.values() if move.kind == "reference")
            # Every feasible reference, on the front or not: the study's one training draw can drop a
            # reference off the front by luck (a plan that drew high, or the reference drawing low),
            # and a reference that is beaten only on that draw is not beaten.
            references = [t for t in trials if _feasible(t) and "reference" in t.user_attrs and set(space) <= set(t.params)]
            move = self._refine_reference(study, trials, references, space, tried, refined)
            return None if move is None else replace(move, kind="reference")
        tries = Counter(t.user_attrs.get("local_from") for t in trials)
        tries.update(move.parent for move in self._moves.values())
        pool = list(zip(front, _parent_weights(study, front, tries) or [1.0] * len(front)))
        while pool:
            weights = [w for _, w in pool]
            i = self._rng.choices(range(len(pool)), weights)[0] if sum(weights) > 0 else self._rng.randrange(len(pool))
            parent, _ = pool.pop(i)
            fresh = [m for m in one_steps(space, parent) if key(m.params) not in tried]
            if fresh:
                return self._rng.choice(fresh)
        return None

    def _refine_reference(self, study: Study, trials: Sequence[FrozenTrial], references: Sequence[FrozenTrial],
                          space: dict[str, BaseDistribution], tried: set[tuple], refined: Counter) -> Move | None:
        """A move that makes one of the feasible uniform ``references`` smaller, or None.

        A reference that no feasible trial of the study beats yet goes before one that is beaten
        (more moves of a beaten reference change nothing of its verdict, and a plan that ties a
        reference on average beats the study's one draw of it about one time in two, so the
        unbeaten ones need the tries); then the least tried, each at most ``refine`` times (a
        reference no move beats would otherwise take every one of these turns). Of a reference's
        shrinking moves, bit trades and end trades (see ``squeeze.search._local``), one that keeps
        the network goes first: its latency is then the reference's own (one measurement a
        network), so accuracy alone decides whether it beats its parent, where a narrower or
        shallower student must also lose no accuracy and be no slower. In the search-quality
        benchmark's run of commit 26acdeb, 16 of the 20 plans that beat a reference on the
        mean of five training seeds kept the reference's network, and where structural steps went
        first (each kind once, because an untried kind is expected to change nothing) they took a
        reference's turns: a depth step lost 0.098. Then the move whose steps have cost the least
        accuracy so far in this study; among equals, a trade (the one move that can gain accuracy
        at the reference's latency: precision goes where it is worth most; an end trade, of three
        steps, before a trade of two), then the one that saves the most weight-bits
        (``_local.bits_saved``: the largest layer a step down).

        Moves that cannot beat the reference are left out: those whose steps have lost more than
        ``hopeless`` (one point) of accuracy so far, and those that change the network with steps
        that have made networks slower so far (``_local.latency_effects``; fewer channels are not
        always faster on int8 kernels). A reference left with no such move gives its turn to the
        next one, and the model has the turn when none is left.
        """
        if not references:
            return None
        accuracy = next((i for i, d in enumerate(study.directions) if d == StudyDirection.MAXIMIZE), None)
        effects = {} if accuracy is None else step_effects(trials, objective=accuracy)
        # squeeze's objectives are accuracy, size and latency, in that order.
        latency = 2 if len(study.directions) == 3 and study.directions[2] == StudyDirection.MINIMIZE else None
        slower = {} if latency is None else latency_effects(trials, objective=latency)

        def hopeful(move: Move) -> bool:
            # A move that cannot beat the reference is not worth a trial: one whose steps have lost
            # more than ``hopeless`` accuracy so far, or (unless it keeps the network) made it slower.
            return predicted(move, effects) >= -self._hopeless and (move.same_network or predicted(move, slower) <= 0)

        beaten = {t.number for t in references if _beaten(t, trials, study.directions)}
        for parent in sorted(references, key=lambda t: (t.number in beaten, refined[t.number], t.number)):
            if refined[parent.number] >= self._refine:
                continue
            fresh = [m for m in shrinking(space, parent) + bit_trades(space, parent) + end_trades(space, parent)
                     if key(m.params) not in tried and hopeful(m)]
            if fresh:
                self._rng.shuffle(fresh)
                weights = parent.user_attrs.get("weights")
                weights = weights if isinstance(weights, Mapping) else {}
                return max(fresh, key=lambda m: (m.same_network, round(predicted(m, effects), 6), len(m.steps),
                                                 bits_saved(m, weights)))
        return None

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        move = self._moves.pop(trial._trial_id, None)
        if move is not None:
            study._storage.set_trial_user_attr(trial._trial_id, "local_from", move.parent)
            study._storage.set_trial_user_attr(trial._trial_id, "local_steps", [list(step) for step in move.steps])
            study._storage.set_trial_user_attr(trial._trial_id, "local_move", move.label)
            study._storage.set_trial_user_attr(trial._trial_id, "local_kind", move.kind)
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
