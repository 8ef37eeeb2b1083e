"""``cnn``: stages of conv-BN-ReLU blocks, global pooling and a linear classifier.

Stable layer names: ``stages.<i>.<j>.conv`` for the j-th block of stage i, and ``classifier``.
A student keeps the names of the blocks it keeps, so ``sparsity.stages.1.0.conv`` means the same
layer in every trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._errors import SqueezeError
from ._families import Knob, register_family


class ConvBlock(nn.Sequential):
    """conv3x3 - BatchNorm - ReLU."""

    def __init__(self, cin: int, cout: int, *, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()


class StagedCNN(nn.Module):
    """Stages of ConvBlocks; every stage after the first halves the resolution."""

    def __init__(self, *, in_channels: int, num_classes: int, widths: list[int], depths: list[int]) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(ConvBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.stages(x))))


def _positive_int_list(options: Mapping[str, Any], key: str) -> list[int]:
    value = options.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise SqueezeError(
            f"`task.model.{key}` must be a non-empty list of positive integers, but got {value!r}."
        )
    return list(value)


@register_family("cnn")
class CNNFamily:
    """A configurable plain CNN; options ``widths`` and ``depths``, one entry per stage."""

    name = "cnn"
    defaults: dict[str, Any] = {"widths": [16, 32, 64], "depths": [1, 1, 1]}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(self.defaults) - {"checkpoint"}
        if unknown:
            raise SqueezeError(
                f"unknown key `task.model.{sorted(unknown)[0]}`; the cnn family takes {sorted({*self.defaults, 'checkpoint'})}."
            )
        merged = {**self.defaults, **options}
        widths = _positive_int_list(merged, "widths")
        depths = _positive_int_list(merged, "depths")
        if len(widths) != len(depths):
            raise SqueezeError(
                f"`task.model.widths` and `task.model.depths` must have one entry per stage, "
                f"but got {len(widths)} and {len(depths)}."
            )
        checkpoint = options.get("checkpoint")
        if checkpoint is None:
            return {"widths": widths, "depths": depths}
        if not isinstance(checkpoint, str) or not checkpoint:
            raise SqueezeError(f"`task.model.checkpoint` must be a file path string, but got {checkpoint!r}.")
        return {"widths": widths, "depths": depths, "checkpoint": checkpoint}

    def build(
        self,
        options: Mapping[str, Any],
        *,
        in_channels: int,
        num_classes: int,
        student: Mapping[str, Mapping[str, float | int]] | None = None,
    ) -> nn.Module:
        widths, depths = list(options["widths"]), list(options["depths"])
        if student:
            width_mult = student.get("width", {})
            depth = student.get("depth", {})
            widths = [
                max(1, round(w * float(width_mult.get(f"stage{i}", 1.0)))) for i, w in enumerate(widths)
            ]
            depths = [
                min(d, max(1, int(depth.get(f"stage{i}", d)))) for i, d in enumerate(depths)
            ]
        return StagedCNN(in_channels=in_channels, num_classes=num_classes, widths=widths, depths=depths)

    def knobs(self, options: Mapping[str, Any], *, widths: tuple[float, ...]) -> list[Knob]:
        knobs = [Knob("width", f"stage{i}", tuple(widths)) for i in range(len(options["widths"]))]
        knobs += [
            Knob("depth", f"stage{i}", tuple(range(1, d + 1)))
            for i, d in enumerate(options["depths"])
            if d > 1
        ]
        return knobs

    def prunable(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]

    def quantizable(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
