"""From arrays to :class:`TaskData`: resize, normalise per channel on the training part, wrap as tensors.

The normalisation is fitted on the training part only, so nothing about the validation and test
splits leaks into training, unless the study file gives its own (``[task.options] mean`` and ``std``, as
torchvision's ``Normalize`` takes them, on pixel values in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from squeeze.spaces import SqueezeError

from ._task_options import ImageOptions
from ._task_registry import TaskData


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize with antialiasing, in chunks (a whole data set at once would double its memory)."""
    if size is None or tuple(x.shape[2:]) == size:
        return x
    import torch.nn.functional as F

    chunks = [
        F.interpolate(x[i : i + 2048], size=size, mode="bilinear", antialias=True, align_corners=False)
        for i in range(0, len(x), 2048)
    ]
    return torch.cat(chunks) if chunks else x.new_zeros(0, x.shape[1], *size)


def task_data(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_holdout: np.ndarray,
    y_holdout: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    image: ImageOptions | None = None,
) -> TaskData:
    """Resize to ``image.input_size``, normalise per channel and wrap as tensors.

    The normalisation is ``image.mean`` and ``image.std`` when the study file gives them, else the
    statistics of the training part only.
    """
    image = image or ImageOptions()
    xt = resize(torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32)), image.input_size)
    xh = resize(torch.as_tensor(np.ascontiguousarray(x_holdout, dtype=np.float32)), image.input_size)
    xs = resize(torch.as_tensor(np.ascontiguousarray(x_test, dtype=np.float32)), image.input_size)
    if image.mean is not None and image.std is not None:
        channels = xt.shape[1]
        for key, values in (("mean", image.mean), ("std", image.std)):
            if len(values) not in (1, channels):
                raise SqueezeError(
                    f"`task.options.{key}` must give one number or one per channel ({channels}) of task {name!r}, "
                    f"but gives {len(values)}."
                )
        mean = torch.tensor(image.mean).expand(channels).reshape(1, channels, 1, 1)
        std = torch.tensor(image.std).expand(channels).reshape(1, channels, 1, 1)
    else:
        mean = xt.mean(dim=(0, 2, 3), keepdim=True)
        std = xt.std(dim=(0, 2, 3), keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays finite, not NaN
    return TaskData(
        name=name,
        x_train=(xt - mean) / std,
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_holdout=(xh - mean) / std,
        y_holdout=torch.from_numpy(np.asarray(y_holdout, dtype=np.int64)),
        x_test=(xs - mean) / std,
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        in_channels=xt.shape[1],
        num_classes=num_classes,
        input_size=(xt.shape[2], xt.shape[3]),
        mean=tuple(float(v) for v in mean.reshape(-1)),
        std=tuple(float(v) for v in std.reshape(-1)),
    )
