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
