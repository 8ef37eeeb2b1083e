"""The check's core: one plan taken through a trial's steps untrained, and halving a set of parts down to the bad ones."""

from __future__ import annotations

import torch
from torch import nn

from squeeze.objectives import (CompressSpec, StepFailure, check_teacher, decode, isolate, load_task, teacher_artifact,
                                try_plan)
from squeeze.spaces import CompressionPlan, JointSpace, SpaceSpec, family_named, get_family


def _failing_on(bad: set[str], calls: list[list[str]]):
    def attempt(parts: list[str]) -> StepFailure | None:
        calls.append(list(parts))
        return StepFailure("prune", f"IndexError: {sorted(bad & set(parts))}") if bad & set(parts) else None
    return attempt


def test_isolate_finds_each_bad_part_in_a_few_attempts_and_keeps_the_rest() -> None:
    parts = [f"g{i}" for i in range(32)]
    calls: list[list[str]] = []
    good, failed = isolate(parts, _failing_on({"g5", "g20"}, calls))
    assert good == [p for p in parts if p not in {"g5", "g20"}]
    assert set(failed) == {"g5", "g20"} and failed["g5"].reason == "IndexError: ['g5']"
    assert len(calls) <= 2 * 2 * 6, "about two attempts a halving for each bad part"
    calls.clear()
    assert isolate(parts, _failing_on(set(), calls)) == (parts, {}) and len(calls) == 1


def test_isolate_takes_out_a_part_that_fails_only_with_others_and_says_so() -> None:
    def attempt(parts: list[str]) -> StepFailure | None:
        return StepFailure("load", "NotImplementedError: quantized::linear") if {"conv5", "fc"} <= set(parts) else None

    good, failed = isolate(["conv1", "conv5", "fc"], attempt)
    assert good == ["conv1", "conv5"] and list(failed) == ["fc"]
    assert failed["fc"].reason == "only with the parts kept before it: NotImplementedError: quantized::linear"


def _user_space(factory: str, **spec):
    data = load_task("_user_models:load_data", options={"kwargs": {"size": 8, "n": 24}}, seed=0, holdout=0.3, data_dir=None)
    family = get_family(f"_user_models:{factory}")
    options = family.check_options({})
    teacher = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes).eval()
    return teacher, JointSpace(family, options, SpaceSpec(**spec), teacher=teacher), data


def test_an_attempt_names_the_step_that_fails_and_the_library_s_message() -> None:
    teacher, space, data = _user_space("make_awkward")
    common = {"teacher": teacher, "space": space, "data": data, "compress": CompressSpec()}
    assert try_plan(CompressionPlan(), **common) is None
    pruned = try_plan(CompressionPlan(sparsity={"a": 0.5}), **common)
    assert pruned is not None and pruned.step == "run" and pruned.reason.startswith("RuntimeError: The size of tensor a")
    quantized = try_plan(CompressionPlan(bits={"b": 8}), **common)
    assert quantized is not None and quantized.step == "load"
    assert quantized.reason == "ValueError: 'padding_mode' circular is not supported by quantized convolution"
    assert try_plan(CompressionPlan(sparsity={"b": 0.5}, bits={"a": 4, "c": 8}), **common) is None


def test_layers_no_quantizer_reaches_are_taken_out_without_an_attempt() -> None:
    teacher, space, data = _user_space("make_unreached", bits=(4, 8, 32), prune=False)
    common = {"teacher": teacher, "space": space, "data": data, "compress": CompressSpec()}
    # Each fails when attempted: the rule takes out what attempts would, for less.
    for layer in ("gate", "mix"):
        failure = try_plan(CompressionPlan(bits={layer: 8}), **common)
        assert failure is not None and failure.step in {"quantize", "materialize"}, layer
    teacher.train()  # the check runs it in eval mode, and gives it back as it was
    report = check_teacher(teacher, space=space, data=data, compress=CompressSpec())
    reasons = {r.parameter: r.reason for r in report.removals}
    assert reasons == {
        "bits.gate": "AssertionError: Gate is not registered, please register setting with QuantizationSetting.register().",
        "bits.mix": "its forward never runs (the network reads its weight directly), so no quantizer can see it",
    }
    assert (report.layers, report.layers_quantized) == (4, 2)
    assert report.attempts == 1, "the rest works at once: one attempt"
    assert teacher.training


class _Computed(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        # As torchvision's RegNet does: widths computed with tensors, which the meta device cannot read back.
        widths = (torch.round(torch.tensor([6.0, 11.0]) / 4) * 4).int().tolist()
        self.a = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.b = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.head = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_a_builder_that_computes_its_widths_with_tensors_rebuilds_from_its_artifact() -> None:
    data = load_task("_user_models:load_data", options={"kwargs": {"size": 8, "n": 24}}, seed=0, holdout=0.3, data_dir=None)

    def make(*, in_channels: int, num_classes: int) -> nn.Module:
        return _Computed(in_channels, num_classes)

    family = family_named("tests:computed", source="test", family=make)
    teacher = family.build({}, in_channels=data.in_channels, num_classes=data.num_classes).eval()
    blob = teacher_artifact(teacher, family=family, options={}, data=data)
    loaded = decode(blob, family=family).module
    assert torch.allclose(loaded(data.x_holdout[:2]), teacher(data.x_holdout[:2]), atol=1e-5)
