"""``auto``, the default sampler: TPE with local moves of front points and of the uniform references.

The rules, in the order a study meets them (``docs/samplers.md`` explains them for users; the
runs behind them are in ``benchmarks/sampler_evidence.md``):

1. **Start-up.** Until :func:`startup_trials` trials have completed, every trial is the model's;
   the study fills those slots with the uniform references and anchors it enqueues (see
   ``_opening``) in place of random draws. Why: the search starts from the axis along which uniform
   policies trade accuracy for size and speed, and moves need a front to start from.
2. **Turns.** Each trial that is not enqueued is a turn, drawn from a random stream of its own:
   ``local`` (half) of the turns are front moves; of the rest, ``refine_share`` (three in four, so
   three trials in eight) are reference moves; the others are the model's (TPE, later NSGA-II). A
   turn with no move to make goes to the model. Why a stream of its own: what the moves draw then
   cannot shift whose turn a trial is.
3. **Front moves.** One parameter of a point of the feasible front moved one step, never to a plan
   already tried. Why: every trial trains under the study's one seed, so a move's difference from
   its parent is its own, and model-based proposals seldom come back to a front point's network.
4. **Which front point.** Drawn with weight = the hypervolume it alone holds / (1 + the moves it
   has had). Why: a move starts where it can add most, and a point moved often without being
   replaced gives way to the next.
5. **Reference moves** come out of the model's turns, not the front's. Why: the front's moves carry the
   hypervolume, and the study is there to beat the policies a person tries first.
6. **Which reference.** Every feasible uniform reference, on the front or not; one no feasible
   trial beats yet first, then the least moved; at most ``refine`` (8) moves each, counting only
   its own turns. Why: a reference can fall off the front on the study's one training draw and
   still be unbeaten on average, more moves of a beaten one change nothing of its verdict, and the
   cap stops a reference that no move beats from taking every turn.
7. **Which move of a reference.** Shrinking moves, bit trades and end trades (see ``_moves``),
   less those that cannot beat it: steps that have lost more than ``hopeless`` (one point) of
   accuracy so far, and network-changing steps that have made networks slower so far. Of the rest,
   in order: one that keeps the network; the least expected accuracy loss (see ``_effects``); more
   steps (an end trade, then a trade); the most weight-bits saved. Why: at the reference's own
   network its latency is the reference's, so accuracy alone decides; only a trade can gain
   accuracy at that latency; and the largest layers lose least a step down.
8. **The switch.** Once the median of TPE's own time over the last ``window`` (10) trials passes
   ``share`` (5%) of the median trial's wall time, NSGA-II proposes for the rest of the study.
   Why: TPE's cost grows with the study's trials, NSGA-II's stays about a millisecond.

A move records ``local_from`` (the parent trial), ``local_steps`` (each ``[parameter, from, to]``),
``local_move`` (a line for people) and ``local_kind`` (``"front"`` or ``"reference"``); every trial
records ``sampler_ms`` and ``sampler`` (see ``_timed``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .._pareto import Point, Teacher, dominates_values, contributions
from ._effects import latency_effects, predicted, step_effects
from ._moves import Move, bit_trades, bits_saved, end_trades, key, one_steps, shrinking
from ._optuna import nsga2, startup_trials, tpe
from ._timed import TimedSampler
from .._attrs import StudyAttr, TrialAttr


def _parent_weights(study: Study, front: Sequence[FrozenTrial], tries: Counter) -> list[float] | None:
    """How likely each front point is to be the next move's parent; None for all alike.

    In a study of squeeze's three objectives with a known teacher, a point's weight is the
    hypervolume it alone holds (``squeeze.search._pareto.contributions``, the study's own measure)
    over one plus the moves it has had. Elsewhere there is no such measure, and points are drawn alike.
    """
    attrs = study.user_attrs
    if attrs.get(StudyAttr.OBJECTIVES) != ["accuracy", "size_bytes", "latency_ratio"] or not attrs.get(StudyAttr.TEACHER_BYTES):
        return None
    teacher = Teacher(accuracy=attrs.get(StudyAttr.TEACHER_ACCURACY, 1.0), size_bytes=attrs[StudyAttr.TEACHER_BYTES])
    points = [Point(number=t.number, accuracy=t.values[0], size_bytes=int(t.values[1]), latency_ratio=t.values[2])
              for t in front]
    weights = [share / (1 + tries[t.number]) for t, share in zip(front, contributions(points, teacher=teacher))]
    return weights if sum(weights) > 0 else None


def _feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values())


def _beaten(reference: FrozenTrial, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> bool:
    """Whether a feasible trial of ``trials`` is at least as good as ``reference`` in every objective and better in one."""
    def minimised(t: FrozenTrial) -> tuple[float, ...]:
        return tuple(-v if d == StudyDirection.MAXIMIZE else v for d, v in zip(directions, t.values))

    mine = minimised(reference)
    return any(dominates_values(minimised(t), mine) for t in trials if _feasible(t) and t.number != reference.number)


class AutoSampler(TimedSampler):
    """TPE with local moves of front points and of the uniform references, then NSGA-II once TPE is costly.

    ``share``, ``window``: the switch (rule 8 of this module). ``local``: the share of turns that
    are front moves. ``refine_share``: the share of the remaining turns that are reference moves
    (0 turns them off, as does ``refine=0``). ``refine``: the most moves a reference gets.
    ``hopeless``: the expected accuracy loss beyond which a reference move is not tried.
    """

    def __init__(self, *, seed: int, trials: int, share: float = 0.05, window: int = 10, local: float = 0.5,
                 refine_share: float = 0.75, refine: int = 8, hopeless: float = 0.01) -> None:
        if not (0.0 <= local <= 1.0 and 0.0 <= refine_share <= 1.0):
            raise ValueError(f"`local` and `refine_share` are shares and must be in [0, 1], "
                             f"but got ({local=}, {refine_share=}).")
        super().__init__(tpe(seed, trials), name="tpe")
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
            refined = Counter(t.user_attrs.get(TrialAttr.LOCAL_FROM) for t in trials
                              if t.user_attrs.get(TrialAttr.LOCAL_KIND, "reference") == "reference")
            refined.update(move.parent for move in self._moves.values() if move.kind == "reference")
            # Every feasible reference, on the front or not: one beaten only on the study's one
            # training draw is not beaten.
            references = [t for t in trials if _feasible(t) and TrialAttr.REFERENCE in t.user_attrs and set(space) <= set(t.params)]
            move = self._refine_reference(study, trials, references, space, tried, refined)
            return None if move is None else replace(move, kind="reference")
        tries = Counter(t.user_attrs.get(TrialAttr.LOCAL_FROM) for t in trials)
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
        """A move that makes one of the feasible uniform ``references`` smaller, or None (rules 6 and 7 of this module).

        References in order: unbeaten before beaten, then the least moved, each at most ``refine``
        times. A reference's moves in order: those that keep its network, the least expected
        accuracy loss, more steps, the most weight-bits saved; ties broken by a shuffle. A
        reference left with no hopeful move gives its turn to the next one, and to the model when
        none is left.
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
                weights = parent.user_attrs.get(TrialAttr.WEIGHTS)
                weights = weights if isinstance(weights, Mapping) else {}
                return max(fresh, key=lambda m: (m.same_network, round(predicted(m, effects), 6), len(m.steps),
                                                 bits_saved(m, weights)))
        return None

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        move = self._moves.pop(trial._trial_id, None)
        if move is not None:
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.LOCAL_FROM, move.parent)
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.LOCAL_STEPS, [list(step) for step in move.steps])
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.LOCAL_MOVE, move.label)
            study._storage.set_trial_user_attr(trial._trial_id, TrialAttr.LOCAL_KIND, move.kind)
        super().after_trial(study, trial, state, values)

    def _observe(self, study: Study, trial: FrozenTrial, spent: float) -> None:
        # The switch (rule 8): only TPE is watched, and it happens once.
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
            self._inner = nsga2(self._seed, self._trials)
            self._name = "nsga2"
