"""A user's own model and data set, as a study names them: ``_user_models:make_net``, ``_user_models:load_data``.

``tests/`` is on ``sys.path`` (through its conftest), so these import as a user's module would.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()) for _ in range(blocks)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


def make_net(*, in_channels: int = 1, num_classes: int = 10, width: int = 8, blocks: int = 2) -> nn.Module:
    return Net(in_channels, num_classes, width, blocks)


NOT_A_FUNCTION = 3


def load_data(*, seed: int, size: int = 10, n: int = 40, validation: bool = False):
    """(train, test): a pair of arrays, and a Dataset of (image, label) pairs; with ``validation``,
    (train, validation, test). Every part draws its own images."""
    rng = np.random.default_rng(seed)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(count) % 4
        return (rng.random((count, 2, size, size)) + y[:, None, None, None]).astype(np.float32), y

    train = draw(n)
    x_test, y_test = draw(n // 2)
    test = [(torch.from_numpy(x_test[i]), int(y_test[i])) for i in range(len(y_test))]
    return (train, draw(n // 4), test) if validation else (train, test)


def broken_data():
    raise OSError("the share is not mounted")


def not_pairs():
    return "train", "test"


# --- Networks that break one step of compression each (tests/search/test_check_study.py) -------------------------


class _ShuffleUnit(nn.Module):
    """ShuffleNet's unit at stride 1: half the channels pass, half go through a convolution, then they are shuffled."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, rest = x.chunk(2, dim=1)
        x = torch.cat([kept, self.branch(rest)], 1)
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class Shuffled(nn.Module):
    """Three shuffle units in a row: Torch-Pruning's dependency graph cannot be built (ZeroDivisionError)."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.units = nn.Sequential(*(_ShuffleUnit(width) for _ in range(3)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)).mean((2, 3)))


def make_shuffled(*, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    return Shuffled(in_channels, num_classes, width)


class Awkward(nn.Module):
    """Two layers that do not compress: ``a``'s channels meet a buffer Torch-Pruning does not prune (so
    pruning ``a`` breaks the forward pass), and ``b`` pads circularly (no int8 kernel does)."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1, padding_mode="circular")
        self.c = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)
        self.register_buffer("scale", torch.ones(1, width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x)) * self.scale
        x = torch.relu(self.c(torch.relu(self.b(x))))
        return self.head(x.mean((2, 3)))


def make_awkward(*, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    return Awkward(in_channels, num_classes, width)


class EvenOnly(nn.Module):
    """Its shuffle needs an even width after ``a``: 12 channels pruned by half (6) work, by a quarter (9) do not."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


def make_even_only(*, in_channels: int = 1, num_classes: int = 10, width: int = 12) -> nn.Module:
    return EvenOnly(in_channels, num_classes, width)


class Branching(nn.Module):
    """A forward pass that branches on a tensor's value: torch.fx cannot trace it, so no artifact can hold it."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if x.mean() > 0:
            x = torch.relu(x)
        return self.head(x.mean((2, 3)))


def make_branching(*, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    return Branching(in_channels, num_classes, width)


class Gate(nn.Linear):
    """A linear layer of a class NNI's quantizers do not know (they look classes up by name)."""


class Unreached(nn.Module):
    """Two layers no quantizer can reach: ``gate`` is of a class NNI has no setting for, and ``mix``'s own
    forward never runs (its weight is read directly, as Swin's attention reads ``qkv.weight``)."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, width, 3, padding=1)
        self.mix = nn.Linear(width, width)
        self.gate = Gate(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x)).mean((2, 3))
        x = torch.nn.functional.linear(x, self.mix.weight, self.mix.bias)
        return self.head(torch.relu(self.gate(x)))


def make_unreached(*, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    return Unreached(in_channels, num_classes, width)
