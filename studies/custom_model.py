"""An example of a user's own model for `family = "studies.custom_model:make_net"` (see custom_mnist.toml).

A factory returns an nn.Module; it receives `in_channels` and `num_classes` when it takes them.
Students are built with other keyword arguments, so layers a student keeps must keep their names.
"""

from __future__ import annotations

from torch import nn


class Net(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)  # residual: the stem and every block share one group of channels
        return self.head(x.mean((2, 3)))


def make_net(*, in_channels: int = 1, num_classes: int = 10, width: int = 32, blocks: int = 2) -> nn.Module:
    return Net(in_channels=in_channels, num_classes=num_classes, width=width, blocks=blocks)
