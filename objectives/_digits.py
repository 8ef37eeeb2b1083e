"""Task ``digits``: scikit-learn's bundled 8x8 digits, the default study's data (no folder needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._normalise import task_data
from ._splits import three_way
from ._task_options import check_options
from ._task_registry import TaskData, register_task


@register_task("digits")
def _load_digits(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images, no test split of their own); ``data_dir`` is not used."""
    from sklearn.datasets import load_digits

    check_options("digits", options, ())
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    train, held, tested = three_way(y, holdout=holdout, test=test, seed=seed, what="the digits data")
    return task_data("digits", x[train], y[train], x[held], y[held], x[tested], y[tested], num_classes=10)
