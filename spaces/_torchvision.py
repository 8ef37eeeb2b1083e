"""torchvision's families: ``resnet18``, ``resnet34``, ``mobilenet_v2``, ``mobilenet_v3_small``, ``efficientnet_b0``.

Built from torchvision's own blocks with random weights (nothing is downloaded). Three changes
make them fit this search:

- **The stem takes the task's images.** Its first convolution takes ``in_channels`` (1 for MNIST),
  and with ``stem = "small"`` (the default) it is a 3x3 stride-1 convolution with no max-pool, so
  28x28 and 32x32 inputs keep enough resolution; ``stem = "imagenet"`` keeps torchvision's stem.
- **Layer names are the teacher's in every student.** A student with fewer blocks keeps the first
  blocks of each stage under the teacher's names: where torchvision numbers blocks in one flat
  ``features`` list (MobileNets), the list is keyed by the teacher's indices, so ``features.7`` is
  the same block in every trial even when ``features.5`` and ``features.6`` were dropped.
- **The graph is the teacher's in every student.** Whether a block adds its input back is fixed by
  the teacher's configuration, not by the student's rounded widths (a narrow student could otherwise
  gain a residual addition, and with it different coupled channels).

The classifier outputs ``num_classes``. Prunable layers are found on the traced graph (``_groups``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import mobilenetv3 as tv_mobilenetv3
from torchvision.models import resnet as tv_resnet

from ._errors import SqueezeError
from ._families import Knob, register_family
from ._groups import discover, topology_key

STEMS = ("small", "imagenet")
DEPTH_COEFFICIENTS = (0.25, 0.5, 0.75, 1.0)
"""Depth coefficients a student of ``efficientnet_b0`` may take (relative to the teacher's)."""


# --- shared ---------------------------------------------------------------------------------------


def _stem_conv(old: nn.Conv2d, *, in_channels: int, stem: str) -> nn.Conv2d:
    """``old`` with the task's input channels; 3x3 stride 1 for the small stem."""
    if stem == "small":
        conv = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    else:
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    return conv


def _keyed(modules: Sequence[nn.Module], keys: Sequence[int]) -> nn.Sequential:
    """A Sequential whose children are named by the teacher's indices."""
    return nn.Sequential(OrderedDict((str(k), m) for k, m in zip(keys, modules, strict=True)))


def _set_residual(blocks: Sequence[nn.Module], flags: Sequence[bool]) -> None:
    for block, flag in zip(blocks, flags, strict=True):
        block.use_res_connect = flag


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Family:
    """What the torchvision families share: option checks, layer discovery and quantizable layers."""

    name = ""
    defaults: dict[str, Any] = {}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        allowed = {*self.defaults, "stem", "checkpoint"}
        unknown = set(options) - allowed
        if unknown:
            raise SqueezeError(
                f"unknown key `task.model.{sorted(unknown)[0]}`; the {self.name} family takes {sorted(allowed)}."
            )
        merged: dict[str, Any] = {**self.defaults, "stem": "small", **options}
        if merged["stem"] not in STEMS:
            raise SqueezeError(f"`task.model.stem` must be one of {list(STEMS)}, but got {merged['stem']!r}.")
        checkpoint = merged.get("checkpoint")
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
            raise SqueezeError(f"`task.model.checkpoint` must be a file path string, but got {checkpoint!r}.")
        self._check(merged)
        return merged

    def _check(self, options: dict[str, Any]) -> None:
        for key in ("width", "depth"):
            if key in self.defaults:
                value = options[key]
                if not _is_number(value) or not 0 < value <= 4:
                    raise SqueezeError(f"`task.model.{key}` must be a number in (0, 4], but got {value!r}.")

    def prunable(self, model: nn.Module) -> list[str]:
        # These networks pool globally, so a small probe traces the same graph as a full-size input.
        example = torch.zeros(1, _first_conv(model).in_channels, 16, 16)
        return [g.leader for g in discover(model, example=example, key=topology_key(model, extra=self.name))]

    def quantizable(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# --- ResNet ---------------------------------------------------------------------------------------


class ResNet(tv_resnet.ResNet):
    """torchvision's ResNet with basic blocks, a width per stage and the task's stem."""

    def __init__(self, *, in_channels: int, num_classes: int, widths: Sequence[int], blocks: Sequence[int], stem: str) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        # The stem's width is the first stage's: layer1 adds its input back, so they are one group anyway.
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        if stem == "small":
            self.conv1 = _stem_conv(self.conv1, in_channels=in_channels, stem=stem)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(tv_resnet.BasicBlock, widths[0], blocks[0])
        self.layer2 = self._make_layer(tv_resnet.BasicBlock, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(tv_resnet.BasicBlock, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(tv_resnet.BasicBlock, widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _int_list(options: Mapping[str, Any], key: str, length: int) -> list[int]:
    value = options[key]
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise SqueezeError(f"`task.model.{key}` must be a list of {length} positive integers, but got {value!r}.")
    return list(value)


class _ResNetFamily(_Family):
    """Options ``widths`` and ``blocks`` (one per stage, ``layer1`` to ``layer4``), ``stem``, ``checkpoint``.

    Student knobs: ``width.layer<i>`` (a multiplier of that stage's width) and ``depth.layer<i>``
    (how many of the stage's first blocks are kept).
    """

    blocks: tuple[int, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return {"widths": [64, 128, 256, 512], "blocks": list(self.blocks)}

    def _check(self, options: dict[str, Any]) -> None:
        options["widths"] = _int_list(options, "widths", 4)
        options["blocks"] = _int_list(options, "blocks", 4)

    def build(self, options, *, in_channels, num_classes, student=None) -> nn.Module:
        widths, blocks = list(options["widths"]), list(options["blocks"])
        if student:
            width, depth = student.get("width", {}), student.get("depth", {})
            widths = [max(1, round(w * float(width.get(f"layer{i + 1}", 1.0)))) for i, w in enumerate(widths)]
            blocks = [min(n, max(1, int(depth.get(f"layer{i + 1}", n)))) for i, n in enumerate(blocks)]
        return ResNet(in_channels=in_channels, num_classes=num_classes, widths=widths, blocks=blocks,
                      stem=options.get("stem", "small"))

    def knobs(self, options, *, widths) -> list[Knob]:
        knobs = [Knob("width", f"layer{i + 1}", tuple(widths)) for i in range(4)]
        knobs += [Knob("depth", f"layer{i + 1}", tuple(range(1, n + 1))) for i, n in enumerate(options["blocks"]) if n > 1]
        return knobs


@register_family("resnet18")
class ResNet18Family(_ResNetFamily):
    name = "resnet18"
    blocks = (2, 2, 2, 2)


@register_family("resnet34")
class ResNet34Family(_ResNetFamily):
    name = "resnet34"
    blocks = (3, 4, 6, 3)


# --- MobileNetV2 ----------------------------------------------------------------------------------

_MNV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""torchvision's inverted-residual setting: expansion t, channels c, repeats n, stride s."""


def _stage_keys(repeats: Sequence[int], kept: Sequence[int]) -> list[int]:
    """Teacher indices in ``features`` of the first ``kept[i]`` blocks of each stage (stem is 0)."""
    keys, start = [], 1
    for n, k in zip(repeats, kept, strict=True):
        keys += list(range(start, start + k))
        start += n
    return keys


@register_family("mobilenet_v2")
class MobileNetV2Family(_Family):
    """Options ``width`` (torchvision's width multiplier), ``stem``, ``checkpoint``.

    Student knobs: ``width.multiplier`` (of the teacher's width) and ``depth.stage<i>`` (repeats of
    each stage that has more than one block).
    """

    name = "mobilenet_v2"
    defaults = {"width": 1.0}

    def build(self, options, *, in_channels, num_classes, student=None) -> nn.Module:
        width = float(options["width"])
        repeats = [n for _, _, n, _ in _MNV2]
        if student:
            width *= float(student.get("width", {}).get("multiplier", 1.0))
            depth = student.get("depth", {})
            repeats = [min(n, max(1, int(depth.get(f"stage{i}", n)))) for i, n in enumerate(repeats)]
        setting = [[t, c, r, s] for (t, c, _, s), r in zip(_MNV2, repeats)]
        model = tv_mobilenetv2.MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting)
        feats = list(model.features)
        feats[0][0] = _stem_conv(feats[0][0], in_channels=in_channels, stem=options.get("stem", "small"))
        flags, cin = [], 32
        for (_, c, _, s), r in zip(_MNV2, repeats):
            flags += [s == 1 and cin == c] + [True] * (r - 1)
            cin = c
        _set_residual(feats[1:-1], flags)
        base = [n for _, _, n, _ in _MNV2]
        model.features = _keyed(feats, [0, *_stage_keys(base, repeats), 1 + sum(base)])
        return model

    def knobs(self, options, *, widths) -> list[Knob]:
        knobs = [Knob("width", "multiplier", tuple(widths))]
        knobs += [Knob("depth", f"stage{i}", tuple(range(1, n + 1))) for i, (_, _, n, _) in enumerate(_MNV2) if n > 1]
        return knobs


# --- MobileNetV3-Small ----------------------------------------------------------------------------

_MNV3_SMALL = (
    # input, kernel, expanded, output, squeeze-excitation, activation, stride: torchvision's table
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
)
_MNV3_STAGES = (1, 2, 3, 2, 3)
"""Blocks per stage (a stage: consecutive blocks with one output width)."""


@register_family("mobilenet_v3_small")
class MobileNetV3SmallFamily(_Family):
    """Options ``width`` (torchvision's width multiplier), ``stem``, ``checkpoint``.

    Student knobs: ``width.multiplier`` (of the teacher's width) and ``depth.stage<i>`` (blocks kept
    in each stage of more than one block).
    """

    name = "mobilenet_v3_small"
    defaults = {"width": 1.0}

    def build(self, options, *, in_channels, num_classes, student=None) -> nn.Module:
        width = float(options["width"])
        kept = list(_MNV3_STAGES)
        if student:
            width *= float(student.get("width", {}).get("multiplier", 1.0))
            depth = student.get("depth", {})
            kept = [min(n, max(1, int(depth.get(f"stage{i}", n)))) for i, n in enumerate(kept)]
        keys = _stage_keys(_MNV3_STAGES, kept)
        configs, flags = [], []
        for key in keys:
            cin, k, exp, cout, se, act, s = _MNV3_SMALL[key - 1]
            cfg = tv_mobilenetv3.InvertedResidualConfig(cin, k, exp, cout, se, act, s, 1, width)
            if exp != cin and cfg.expanded_channels == cfg.input_channels:
                cfg.expanded_channels += 8  # keep the expansion layer (and its name) that the teacher has
            configs.append(cfg)
            flags.append(s == 1 and cin == cout)
        last = tv_mobilenetv3.InvertedResidualConfig.adjust_channels(1024, width)
        model = tv_mobilenetv3.MobileNetV3(configs, last, num_classes=num_classes)
        feats = list(model.features)
        feats[0][0] = _stem_conv(feats[0][0], in_channels=in_channels, stem=options.get("stem", "small"))
        _set_residual(feats[1:-1], flags)
        model.features = _keyed(feats, [0, *keys, 1 + len(_MNV3_SMALL)])
        return model

    def knobs(self, options, *, widths) -> list[Knob]:
        knobs = [Knob("width", "multiplier", tuple(widths))]
        knobs += [Knob("depth", f"stage{i}", tuple(range(1, n + 1))) for i, n in enumerate(_MNV3_STAGES) if n > 1]
        return knobs


# --- EfficientNet-B0 ------------------------------------------------------------------------------

_B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
"""torchvision's B0 stages: expansion, kernel, stride, input, output, layers."""


@register_family("efficientnet_b0")
class EfficientNetB0Family(_Family):
    """Options ``width`` and ``depth`` (the teacher's coefficients), ``stem``, ``checkpoint``.

    Student knobs: ``width.coefficient`` and ``depth.coefficient``, relative to the teacher's; each
    stage keeps its first ``ceil(layers * depth)`` blocks, under the teacher's names.
    """

    name = "efficientnet_b0"
    defaults = {"width": 1.0, "depth": 1.0}

    def build(self, options, *, in_channels, num_classes, student=None) -> nn.Module:
        width, depth = float(options["width"]), float(options["depth"])
        if student:
            width *= float(student.get("width", {}).get("coefficient", 1.0))
            depth *= float(student.get("depth", {}).get("coefficient", 1.0))
        configs = [tv_efficientnet.MBConvConfig(*stage, width_mult=width, depth_mult=depth) for stage in _B0]
        model = tv_efficientnet.EfficientNet(configs, dropout=0.2, num_classes=num_classes)
        model.features[0][0] = _stem_conv(model.features[0][0], in_channels=in_channels, stem=options.get("stem", "small"))
        for (_, _, s, cin, cout, _), stage in zip(_B0, list(model.features)[1:-1]):
            _set_residual(list(stage), [s == 1 and cin == cout] + [True] * (len(stage) - 1))
        return model

    def knobs(self, options, *, widths) -> list[Knob]:
        return [Knob("width", "coefficient", tuple(widths)), Knob("depth", "coefficient", DEPTH_COEFFICIENTS)]
