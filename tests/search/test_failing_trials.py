"""A failing trial costs one trial, never the study: divergence, a pruner or quantizer that raises, MemoryError.

The failures are real: the trial's own pipeline (distillation, NNI's Taylor pruner, NNI's QAT
quantizer) is fed training data that makes its loss non-finite, so the error is raised where it
would be in a real study. Only the MemoryError is raised by the wrapper, for one chosen trial.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from optuna.trial import TrialState

from squeeze.objectives import decode
import squeeze.search as ss
from squeeze.search import TrialAttr, _storage, load_spec
from squeeze.search._context import connect
from squeeze.search._objective import network_objective
from squeeze.search._session import run_worker
from squeeze.search._teacher import ensure_teacher
from squeeze.spaces import CompressionPlan, SpaceSpec, SparsityRange, SqueezeError

STUDY = """
[training]
teacher_epochs = 2
distill_steps = 6
finetune_steps = 3
qat_steps = 3
batch_size = 64
"""


def _poisoned(data, value: float):
    """The same task with every training input set to ``value`` (NaN or infinity): any loss on it diverges."""
    return dataclasses.replace(data, x_train=torch.full_like(data.x_train, value))


def test_one_failing_trial_in_a_few_costs_that_trial_and_the_budget_is_met(tiny_study) -> None:
    path = tiny_study(name="flaky", trials=4)
    text = path.read_text(encoding="utf-8")
    # Every layer asks for 99% sparsity at 4 or 8 bits, so the pruner and the quantizer run in every
    # trial; the training budget is small because this test is about failures, not accuracy.
    text = text.replace("sparsity = [0.0, 0.5]", "sparsity = [0.99]").replace("bits = [4, 8, 32]", "bits = [4, 8]")
    text = text.replace("width = [0.5, 1.0]", "width = [0.5]")
    # So small a space repeats its plans: judge each one (early stopping also skips plans judged already).
    text = text.replace("[study]\n", "[study]\nearly_stop = false\n", 1)
    text = text[: text.index("[training]")] + STUDY + text[text.index("[latency]"):]
    path.write_text(text, encoding="utf-8")
    spec = load_spec(path)

    data = ss.prepare(spec)
    ctx = connect(spec, create=True)
    teacher = ensure_teacher(ctx, data)
    good = network_objective(ctx, data=data, teacher=teacher)

    def variant(data_value: float, **changes) -> object:
        parts = {k: dataclasses.replace(getattr(spec, k), **v) for k, v in changes.items()}
        return network_objective(dataclasses.replace(ctx, spec=dataclasses.replace(spec, **parts)),
                                 data=_poisoned(data, data_value), teacher=teacher)

    failing = {
        # NaN inputs: the distillation loss is NaN at its first step.
        1: variant(math.nan),
        # No distillation, Taylor pruning and no quantization (so nothing else trains first or after):
        # NNI's pruner trains on infinite inputs and raises inside compress().
        3: variant(math.inf, training={"distill_steps": 0}, compress={"pruner": "taylor"}, space={"quantize": False}),
        # No distillation or fine-tuning, L1 masks (no training): NNI's QAT quantizer raises on the NaN loss.
        5: variant(math.nan, training={"distill_steps": 0, "finetune_steps": 0}),
    }

    def objective(trial):
        if trial.number == 6:
            raise MemoryError("cannot allocate 17179869184 bytes for the student")
        return failing.get(trial.number, good)(trial)

    report = run_worker(ctx, objective, handle_signals=False)

    trials = {t.number: t for t in ctx.study.get_trials(deepcopy=False)}
    states = {n: t.state for n, t in trials.items()}
    assert report.budget_completed == 4 and not report.interrupted
    assert [n for n, s in states.items() if s == TrialState.COMPLETE] == [0, 2, 4, 7]
    assert [n for n, s in states.items() if s == TrialState.FAIL] == [1, 3, 5, 6]
    expected = {
        1: r"^DivergedError: the distillation loss diverged to nan",
        3: r"^FloatingPointError: the loss diverged to (nan|inf|-inf) inside the NNI compressor",
        5: r"^FloatingPointError: the loss diverged to (nan|inf|-inf) inside the NNI compressor",
        6: r"^MemoryError: cannot allocate",
    }
    for number, pattern in expected.items():
        error = trials[number].user_attrs.get(TrialAttr.ERROR, "")
        assert re.search(pattern, error), (number, error)
        assert trials[number].values is None

    # The completed trials are whole, and none of their 99%-sparsity plans removed every channel of a layer.
    for number in (0, 2, 4, 7):
        t = trials[number]
        assert all(math.isfinite(v) for v in t.values)
        loaded = decode(_storage.get_artifact(ctx.engine, "flaky", number).data)
        assert loaded.plan.sparsity and all(s == 0.99 for s in loaded.plan.sparsity.values())
        assert loaded.arch.channels and min(loaded.arch.channels.values()) >= 1
        out = loaded.module(data.x_holdout[:2])
        assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1])
def test_a_plan_cannot_ask_to_remove_every_channel(sparsity: float) -> None:
    with pytest.raises(SqueezeError, match=r"sparsity of layer `stages\.0\.0\.conv` must be in \[0, 1\)"):
        CompressionPlan(sparsity={"stages.0.0.conv": sparsity})
    with pytest.raises(SqueezeError, match=r"`space\.sparsity`"):
        SpaceSpec(sparsity=(0.0, sparsity))
    with pytest.raises(SqueezeError, match=r"`space\.sparsity` range"):
        SparsityRange(0.0, sparsity)
