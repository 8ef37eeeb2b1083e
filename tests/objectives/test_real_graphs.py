"""The whole trial pipeline on real graphs, for every registered family and a user's factory.

Build the teacher, sample random plans, compress (NNI masks, QAT scales), materialize (channels
removed through Torch-Pruning's groups, int8 FX), run the materialized model, measure bytes and
latency, export the artifact to a file and load it back. Tiny inputs and step counts: what is
checked is that every stage works on residual, depthwise and squeeze-excitation graphs, not accuracy.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import optuna
import pytest
import torch

from squeeze.objectives import (
    CompressSpec,
    LatencySpec,
    TaskData,
    TrainingBudget,
    accuracy,
    decode,
    evaluate,
    load_artifact,
    teacher_artifact,
)
from squeeze.spaces import CompressionPlan, JointSpace, SpaceSpec, get_family, list_families

BUDGET = TrainingBudget(teacher_epochs=1, distill_steps=1, finetune_steps=1, qat_steps=1, batch_size=8)
LATENCY = LatencySpec(repeats=2, warmup=0, min_round_ms=0.2)
SPACE = SpaceSpec(sparsity=(0.0, 0.5), bits=(4, 8, 32), width=(0.5, 1.0))
TINY = {
    "cnn": {"widths": [4, 8], "depths": [1, 2]},
    "resnet18": {"widths": [8, 8, 16, 16]},
    "resnet34": {"widths": [8, 8, 8, 16]},
    "mobilenet_v2": {"width": 0.25},
    "mobilenet_v3_small": {"width": 0.25},
    "efficientnet_b0": {"width": 0.25, "depth": 0.5},
    "_user_models:make_net": {"kwargs": {"width": 16, "blocks": 2}, "knobs": {"width": [8, 16], "blocks": [1, 2]}},
}
FAMILIES = [*list_families(), "_user_models:make_net"]


def _data() -> TaskData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 3
    x = torch.randn(32, 1, 16, 16, generator=g) + y[:, None, None, None].float()
    return TaskData("tiny", x[:16], y[:16], x[16:24], y[16:24], in_channels=1, num_classes=3, input_size=(16, 16),
                    x_test=x[24:], y_test=y[24:])


DATA = _data()


@functools.cache
def _teacher(name: str):
    """The family, its options, an untrained teacher and the teacher's decoded artifact."""
    torch.manual_seed(0)
    family = get_family(name)
    options = family.check_options(TINY[name])
    teacher = family.build(options, in_channels=1, num_classes=3).eval()
    deployed = decode(teacher_artifact(teacher, family=family, options=options, data=DATA), family=family).module
    return family, options, teacher, deployed


def _judge(name: str, plan: CompressionPlan, *, seed: int = 0):
    family, options, teacher, deployed = _teacher(name)
    return evaluate(plan, teacher=teacher, teacher_deployed=deployed, family=family, options=options, data=DATA,
                         budget=BUDGET, compress=CompressSpec(), latency=LATENCY, seed=seed)


def test_every_registered_family_is_covered() -> None:
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_random_plans_compress_materialize_run_and_reload(name: str, tmp_path: Path) -> None:
    family, options, teacher, _ = _teacher(name)
    space = JointSpace(family, options, SPACE, teacher=teacher)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=len(name)))
    for i in range(3):
        trial = study.ask()
        plan = space.plan_for(space.suggest(trial), in_channels=1, num_classes=3)
        judged = _judge(name, plan, seed=i)
        assert judged.size_bytes == len(judged.artifact) > 0
        assert judged.latency.ratio > 0 and judged.latency.candidate_ms > 0
        assert judged.device == "cpu"
        path = tmp_path / f"trial{i}.sqz"
        path.write_bytes(judged.artifact)  # what `squeeze export` writes
        loaded = load_artifact(path, family=family)  # a user's family is handed over, never imported by name
        with torch.no_grad():
            out = loaded.module(DATA.x_holdout)
        assert out.shape == (len(DATA.x_holdout), 3) and torch.isfinite(out).all()
        assert accuracy(loaded.module, DATA.x_holdout, DATA.y_holdout) == judged.accuracy
        assert loaded.plan == plan
        modules = dict(loaded.module.named_modules())
        if any(b <= 8 for b in plan.bits.values()):
            assert any("quantized" in type(m).__module__ for m in modules.values()), "no int8 kernel in the artifact"
        study.tell(trial, [judged.accuracy, judged.size_bytes, judged.latency.ratio])


def _params(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


@pytest.mark.parametrize("name", FAMILIES)
def test_uniform_half_plan_removes_half_of_every_group(name: str) -> None:
    family, _, teacher, deployed = _teacher(name)
    groups = family.prunable(teacher)
    before = {g: dict(teacher.named_modules())[g].weight.shape[0] for g in groups}
    judged = _judge(name, CompressionPlan(sparsity={g: 0.5 for g in groups}))
    loaded = decode(judged.artifact, family=family)
    after = dict(loaded.arch.channels)
    assert set(after) == set(groups)
    for g in groups:  # half of every group's channels, rounded up to keep at least one
        assert after[g] == max(1, math.ceil(before[g] / 2)) or after[g] == max(1, before[g] // 2), (g, before[g], after[g])
    assert sum(after.values()) <= 0.5 * sum(before.values()) + len(groups)
    # Every coupled layer followed its group: the float artifact holds about a quarter to a half of the weights.
    assert _params(loaded.module) < 0.55 * _params(deployed)
    with torch.no_grad():
        assert loaded.module(DATA.x_holdout).shape == (len(DATA.x_holdout), 3)
