"""Tasks ``cifar10`` and ``cifar100``: a local folder in torchvision's on-disk layout.

Nothing is downloaded. The folders are what ``torchvision.datasets.CIFAR10(root, download=True)``
leaves behind, read by torchvision's reader, which unpickles a batch only after its checksum
matches the published file. The test batch is the test split; validation comes out of the training batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.spaces import SqueezeError

from ._normalise import task_data
from ._splits import split, subsample_splits
from ._task_options import image_options
from ._task_registry import TaskData, register_task


def _cifar(name: str, options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None,
           folder: str) -> TaskData:
    """CIFAR-10 or -100 through torchvision's own reader, on the user's folder, never downloading.

    torchvision checks every batch file against the MD5 of the published data set before it
    unpickles it, so only the original files are ever unpickled: a planted or altered file is
    refused unread. (The project itself imports no pickle module.)
    """
    from torchvision import datasets

    opts = image_options(name, options)
    reader = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    files = [f for f, _ in (*reader.train_list, *reader.test_list)] + [reader.meta["filename"]]
    layout = (
        f"torchvision's layout: a folder `{folder}` holding " + ", ".join(f"`{f}`" for f in files)
        + f", the original {title} files (torchvision checks their checksums), given as `task.data` or as that folder's parent"
    )
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name a folder in {layout}, for task {name!r}, but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be a folder in {layout}, but `{data_dir}` is not a folder.")
    root = data_dir.parent if data_dir.name == folder else data_dir
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise SqueezeError(f"`{data_dir}` (`task.data`) is not in {layout}; `{missing[0]}` is missing.")
    try:
        train = reader(str(root), train=True, download=False)
        held = reader(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        reason = str(exc).split(".")[0] or type(exc).__name__
        raise SqueezeError(f"`{data_dir}` (`task.data`) is not in {layout}; torchvision says: {reason}.") from None
    num_classes = len(train.classes)
    x, y = train.data.transpose(0, 3, 1, 2), np.asarray(train.targets, dtype=np.int64)
    x_test, y_test = held.data.transpose(0, 3, 1, 2), np.asarray(held.targets, dtype=np.int64)
    # The test batch is the test split; validation comes out of the training batches.
    train_idx, held_idx = split(y, test=holdout, seed=seed, what=f"the {title} training batches")
    keep, keep_held, keep_test = subsample_splits(
        y[train_idx], y[held_idx], y_test, limits=(opts.limit, opts.holdout_limit, opts.test_limit), seed=seed)
    train_idx, held_idx = train_idx[keep], held_idx[keep_held]
    scale = np.float32(255)
    return task_data(
        name, x[train_idx] / scale, y[train_idx], x[held_idx] / scale, y[held_idx], x_test[keep_test] / scale,
        y_test[keep_test], num_classes=num_classes, image=opts,
    )


@register_task("cifar10")
def _load_cifar10(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """CIFAR-10 from a local folder in torchvision's layout (``cifar-10-batches-py``); its test batch is the test split."""
    return _cifar("cifar10", options, seed=seed, holdout=holdout, data_dir=data_dir, folder="cifar-10-batches-py")


@register_task("cifar100")
def _load_cifar100(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """CIFAR-100 (its 100 fine classes) from a local folder in torchvision's layout (``cifar-100-python``); ``test`` is the test split."""
    return _cifar("cifar100", options, seed=seed, holdout=holdout, data_dir=data_dir, folder="cifar-100-python")
