"""Any torchvision classification network as a user's model family (random weights, nothing downloaded).

Run from the repository root, so that ``studies.torchvision_model`` imports::

    [task]
    family = "studies.torchvision_model:make_net"

    [task.model]
    kwargs = { arch = "shufflenet_v2_x0_5" }           # any name in torchvision.models.list_models()
    knobs = { }                                       # or a keyword the builder takes, e.g. width_mult = [0.25, 0.5]

The first convolution is rebuilt to take the task's channels (1 for MNIST); everything else is the
builder's. ``benchmarks/coverage.py`` runs the study's check over every builder this way.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError(f"{type(model).__name__} has no convolution to take the input channels")


def make_net(*, arch: str, in_channels: int = 3, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs and a first convolution taking ``in_channels``."""
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        parent, attr, old = _first_conv(model)
        conv = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                         dilation=old.dilation, groups=1, bias=old.bias is not None)
        with torch.no_grad():
            # The mean over the input channels keeps the scale the builder's initialisation chose.
            conv.weight.copy_(old.weight.mean(1, keepdim=True).expand_as(conv.weight))
        setattr(parent, attr, conv)
    return model
