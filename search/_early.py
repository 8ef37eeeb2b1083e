"""Early stopping of trials that cannot meet the study's budgets, or that would judge a plan again.

Optuna does not prune multi-objective studies, and a trial here is the expensive part: so a plan
that is known to break a budget, or that the study has judged already, stops as soon as that is
known, and is recorded ``PRUNED`` with the reason (``stopped_early``) and an estimate of the time
it saved (``saved_s``: the median time of this worker's finished trials, less the time this one
took). Stopped trials do not count against the budget of completed trials.

- **Size, before training.** :func:`size_lower_bound` gives the bytes the plan's artifact cannot
  go below; above ``objectives.max_size_kb`` the trial stops before anything is trained.
- **Accuracy, after distillation.** The distilled student's accuracy on a fixed sample of the
  *training* data (held-out data is never used inside a trial) is an optimistic estimate of what
  it will score; more than ``study.early_stop_margin`` below ``objectives.min_accuracy``, it stops.
- **A plan judged already, before training.** Every trial trains with the study's seed, so a plan that a
  completed trial of the study already had gives the same artifact and the same figures: the trial would
  spend its place in the budget for nothing. It stops (``repeat_of`` names that trial) and the sampler
  proposes again. A plan that another worker's earlier trial is judging now stops the same way. A
  worker skips at most ``REPEATS_SKIPPED`` such plans in a row and then judges the next one: a space
  nearly spent does not stall the study.

Stops for a budget are capped: a worker stops early at most ``FREE_STOPS`` trials more than it has
finished.
Samplers that learn only from completed trials (GP; NSGA-II's population) do not see a stopped
trial, so they may propose the same hopeless region again and again; past the cap such trials run
to the end, are recorded infeasible with measured values, and the sampler learns from them.

Latency is not checked before training: it is a measurement, noisy on a shared machine, and a
stop on noise would throw away a trial that meets the budget.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import optuna
import torch
from torch import nn

from squeeze.objectives import TaskData, accuracy, size_lower_bound
from squeeze.spaces import CompressionPlan, ModelFamily

from ._spec import StudySpec
from ._attrs import TrialAttr

SAMPLE = 1024
"""Training samples the distilled student is scored on."""

FREE_STOPS = 10
"""How many more trials a worker may stop early than it has run to the end."""


REPEATS_SKIPPED = 10
"""How many plans judged already a worker skips in a row before it judges the next one anyway."""


class StoppedEarly(optuna.TrialPruned):
    """The trial cannot meet a budget, or repeats a plan judged already; ``attrs`` say why and what it saved."""

    def __init__(self, reason: str, attrs: Mapping[str, Any], constraints: Mapping[str, float]) -> None:
        super().__init__(reason)
        self.attrs = dict(attrs)
        self.constraints = dict(constraints)
        """How far the trial breaks each budget (> 0), for ``Trial.set_constraint``: samplers that read
        constraints (TPE, NSGA-II) then rank it as infeasible, by how far, rather than as merely pruned."""


class EarlyStop:
    """One worker's early-stopping rules and its record of how long full trials take."""

    def __init__(self, spec: StudySpec, *, data: TaskData, family: ModelFamily) -> None:
        self._spec = spec
        self._data = data
        self._family = family
        self._durations: list[float] = []
        self.stopped = 0
        self._repeats_in_a_row = 0
        gen = torch.Generator().manual_seed(spec.study.seed)
        sample = torch.randperm(len(data.x_train), generator=gen)[:SAMPLE]
        self._x, self._y = data.x_train[sample], data.y_train[sample]

    @property
    def enabled(self) -> bool:
        return self._spec.study.early_stop and self.stopped < len(self._durations) + FREE_STOPS

    def finished(self, seconds: float) -> None:
        """Record a trial that ran to the end (the yardstick for the time saved)."""
        self._durations.append(seconds)

    def _stop(self, reason: str, started: float, constraints: Mapping[str, float], *, capped: bool = True,
              **figures: float) -> StoppedEarly:
        # A stop for a budget counts against ``FREE_STOPS``; a repeated plan does not (it has its own cap).
        self.stopped += capped
        spent = time.perf_counter() - started
        saved = max(0.0, statistics.median(self._durations) - spent) if self._durations else None
        attrs = {TrialAttr.STOPPED_EARLY: reason, TrialAttr.STOPPED_AFTER_S: round(spent, 3), **figures}
        if saved is not None:
            attrs[TrialAttr.SAVED_S] = round(saved, 3)
        return StoppedEarly(reason, attrs, constraints)

    def repeated(self, study: optuna.Study, plan: CompressionPlan, *, number: int, started: float) -> None:
        """Raise :class:`StoppedEarly` when a trial of ``study`` judged ``plan`` already, or is judging it.

        A running trial counts when its number is lower than ``number`` (this trial's): of two workers that
        drew one plan at once, the later trial stops and the earlier judges it.
        """
        if not self._spec.study.early_stop or self._repeats_in_a_row >= REPEATS_SKIPPED:
            self._repeats_in_a_row = 0
            return
        wanted = plan.to_dict()
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        for t in study.get_trials(deepcopy=False, states=states):
            if t.user_attrs.get(TrialAttr.PLAN) != wanted:
                continue
            if t.state == optuna.trial.TrialState.COMPLETE:
                reason = f"repeat: trial {t.number} judged this plan already"
            elif t.number < number:
                reason = f"repeat: trial {t.number} is judging this plan"
            else:
                continue
            self._repeats_in_a_row += 1
            raise self._stop(reason, started, {}, capped=False, repeat_of=t.number)
        self._repeats_in_a_row = 0

    def before_training(self, plan: CompressionPlan, *, started: float) -> None:
        """Raise :class:`StoppedEarly` when the plan's smallest possible artifact breaks ``max_size_kb``."""
        limit = self._spec.objectives.max_size_kb
        if not self.enabled or limit is None:
            return
        bound = size_lower_bound(plan, family=self._family, options=self._spec.task.model, data=self._data,
                                 compress=self._spec.compress)
        if bound > limit * 1024:
            raise self._stop(
                f"size: its artifact cannot be smaller than {bound / 1024:.2f} KB, over max_size_kb = {limit:g}",
                started, {"max_size_kb": bound / 1024 - limit}, size_lower_bound=round(bound, 1),
            )

    def after_stage(self, stage: str, model: nn.Module, *, started: float) -> None:
        """Raise :class:`StoppedEarly` when the distilled student is far below ``min_accuracy``."""
        floor = self._spec.objectives.min_accuracy
        if not self.enabled or floor is None or stage != "distil":
            return
        with torch.no_grad():
            acc = accuracy(model, self._x, self._y)
        model.train()
        margin = self._spec.study.early_stop_margin
        if acc < floor - margin:
            raise self._stop(
                f"accuracy: {acc:.4f} on training samples after distillation, more than {margin:g} below "
                f"min_accuracy = {floor:g}", started, {"min_accuracy": floor - acc},
                distilled_train_accuracy=round(acc, 4),
            )
