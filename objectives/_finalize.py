"""Finishing a plan: the trial's exact student, trained with a full budget and measured on the test split.

A trial is a proxy: a few hundred distillation steps, enough to rank plans, not to finish them.
:func:`finalize_plan` runs the same pipeline as a trial (:func:`squeeze.objectives.evaluate`: the
student built from the plan and started from the teacher, pruned by the study's pruner, distilled,
quantized by the study's quantizer, materialized for the study's runtime) with a full recipe
(:func:`final_recipe`): ``epochs`` passes over the training split under a warm-up and a cosine
decay, with the study's augmentation, then quantization-aware steps. Its accuracy is measured on
the test split, which nothing in a search reads; size and latency are measured as for a trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from squeeze.spaces import CompressionPlan, ModelFamily, SqueezeError

from ._compress import CompressSpec
from ._evaluate import Judged, evaluate
from ._latency import Latency, LatencySpec
from ._task_registry import TaskData
from ._train import Recipe, TrainingBudget, accuracy


@dataclass(frozen=True)
class FinalizeSpec:
    """``[finalize]``: how ``squeeze finalize`` trains a chosen plan to the end.

    ``epochs`` passes over the training split of distillation (``--epochs`` overrides it), the
    learning rate rising over the first ``warmup`` share of the steps to ``lr`` (default: the
    study's ``training.lr``) and then decaying along a cosine; then ``qat_steps`` batches of
    quantization-aware training for the layers at 8 bits or fewer. These settings change no trial,
    so a study may change them between runs.
    """

    epochs: int = 10
    qat_steps: int = 300
    warmup: float = 0.05
    lr: float | None = None

    def __post_init__(self) -> None:
        _check_epochs(self.epochs, key="finalize.epochs")
        if isinstance(self.qat_steps, bool) or not isinstance(self.qat_steps, int) or self.qat_steps < 0:
            raise SqueezeError(f"`finalize.qat_steps` must be a non-negative integer, but got {self.qat_steps!r}.")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or not 0 <= self.warmup < 1:
            raise SqueezeError(f"`finalize.warmup` must be a share of the steps in [0, 1), but got {self.warmup!r}.")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0):
            raise SqueezeError(f"`finalize.lr` must be a positive number, but got {self.lr!r}.")


def _check_epochs(epochs: Any, *, key: str) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
        raise SqueezeError(f"`{key}` must be a whole number of epochs from 1 to 10000, but got {epochs!r}.")
    return epochs


def final_recipe(final: FinalizeSpec, budget: TrainingBudget, *, train_samples: int, epochs: int | None = None) -> Recipe:
    """The full recipe for ``train_samples`` training images: ``epochs`` (else ``final.epochs``) passes of distillation.

    All the distillation is one schedule (warm-up, then cosine to 0), so there is no separate
    fine-tuning stage; augmentation follows ``budget.augment``. Raises :class:`SqueezeError`
    naming ``--epochs`` when ``epochs`` is not a positive whole number.
    """
    epochs = final.epochs if epochs is None else _check_epochs(epochs, key="--epochs")
    steps = epochs * max(1, train_samples // budget.batch_size)
    return Recipe(
        distill_steps=steps,
        finetune_steps=0,
        qat_steps=final.qat_steps,
        warmup_steps=math.ceil(final.warmup * steps),
        augment=budget.augment,
        lr=final.lr,
    )


def finalize_plan(
    plan: CompressionPlan,
    *,
    teacher: nn.Module,
    teacher_deployed: nn.Module,
    family: ModelFamily,
    options: Mapping[str, Any],
    data: TaskData,
    budget: TrainingBudget,
    compress: CompressSpec,
    latency: LatencySpec,
    seed: int,
    final: FinalizeSpec | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    card: Mapping[str, Any] | None = None,
    known_latency: Callable[[str], Latency | None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Judged:
    """Train ``plan``'s student to the end and measure it: accuracy on the test split, size and latency as usual.

    The arguments are :func:`squeeze.objectives.evaluate`'s, plus ``final`` (the recipe's
    settings, default :class:`FinalizeSpec`) and ``epochs`` (overrides ``final.epochs``). The
    artifact's card records that it is finished, how many epochs it trained and that its accuracy
    is the test split's. ``progress(stage, step, steps)`` follows distillation step by step.
    """
    final = final or FinalizeSpec()
    recipe = final_recipe(final, budget, train_samples=len(data.x_train), epochs=epochs)
    return evaluate(
        plan, teacher=teacher, teacher_deployed=teacher_deployed, family=family, options=options, data=data,
        budget=budget, compress=compress, latency=latency, seed=seed, device=device, known_latency=known_latency,
        card={**(card or {}), "finished": True, "epochs": final.epochs if epochs is None else epochs,
              "accuracy_split": "test"},
        recipe=recipe, split="test", progress=progress,
    )


def accuracy_on_test(deployed: nn.Module, data: TaskData) -> float:
    """Accuracy of a deployed model (the teacher's artifact, decoded) on the test split: what finished models are compared with."""
    return accuracy(deployed, data.x_test, data.y_test)
