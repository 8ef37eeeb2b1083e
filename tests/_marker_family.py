"""A user's model module that leaves a marker file when imported and another when its factory is called.

Loading an artifact that names ``_marker_family:make`` must leave neither, unless the caller allowed it.
The markers go into the folder named by ``SQUEEZE_TEST_MARKERS`` (nothing is written without it).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def _mark(what: str) -> None:
    folder = os.environ.get("SQUEEZE_TEST_MARKERS")
    if folder:
        Path(folder, what).touch()


_mark("imported")


def make(*, in_channels: int = 1, num_classes: int = 10, width: int = 4) -> nn.Module:
    """A tiny conv net; calling it leaves the ``called`` marker."""
    _mark("called")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
