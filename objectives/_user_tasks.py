"""A user's data set, named ``package.module:function`` in ``task.dataset``, wrapped as a task loader."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeeze.spaces import SqueezeError, import_object

from ._normalise import task_data
from ._splits import split, subsample_splits
from ._task_options import image_options
from ._task_registry import TaskData, TaskLoader

DATA_EXPECTED = (
    "`package.module:function`, a function importable from this Python environment or the current folder that "
    "returns (train, test) or (train, validation, test), each a pair (images N x C x H x W, labels N) or a Dataset "
    "of (image, label)"
)


def _as_arrays(part: Any, *, key: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as float images ``N, C, H, W`` and int64 labels from a pair or a map-style Dataset."""
    try:
        if isinstance(part, (tuple, list)) and len(part) == 2:
            x, y = torch.as_tensor(np.asarray(part[0])), torch.as_tensor(np.asarray(part[1]))
        elif hasattr(part, "__len__") and hasattr(part, "__getitem__"):
            items = [part[i] for i in range(len(part))]
            x = torch.stack([torch.as_tensor(np.asarray(a)) for a, _ in items]) if items else torch.zeros(0)
            y = torch.as_tensor([int(b) for _, b in items])
        else:
            raise TypeError(f"a {type(part).__name__}")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SqueezeError(f"`task.dataset` = {key!r} returned a {which} part that is not images and labels ({exc}); expected {DATA_EXPECTED}.") from None
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y) or len(x) == 0 or y.is_floating_point():
        raise SqueezeError(
            f"`task.dataset` = {key!r} returned a {which} part of images {tuple(x.shape)} and labels {tuple(y.shape)} "
            f"({y.dtype}); expected {DATA_EXPECTED}, non-empty, with integer labels."
        )
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x, y.long()


def user_task(name: str) -> TaskLoader:
    """The loader for a user's ``package.module:function`` data set.

    The function is called with the keyword arguments its signature takes among ``data_dir`` (the
    ``task.data`` folder, a Path or None) and ``seed``, plus ``[task.options] kwargs``. Images are
    floats (or uint8, read as 0..255); the usual image options apply.
    """
    function = import_object(name, key="task.dataset", expected=DATA_EXPECTED)
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        params = {}

    def load(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
        opts = image_options(name, options, extra=("kwargs",))
        kwargs = dict(opts.extra.get("kwargs", {}))
        if not isinstance(opts.extra.get("kwargs", {}), Mapping):
            raise SqueezeError(f"`task.options.kwargs` must be a table of keyword arguments of {name}, but got {opts.extra['kwargs']!r}.")
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for arg, value in (("data_dir", data_dir), ("seed", seed)):
            if arg in params or takes_any:
                kwargs[arg] = value
        try:
            result = function(**kwargs)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failing is bad input, said in one sentence
            raise SqueezeError(
                f"`task.dataset` = {name!r} raised {type(exc).__name__}: {str(exc).rstrip('.')}; expected {DATA_EXPECTED}."
            ) from None
        if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
            raise SqueezeError(f"`task.dataset` = {name!r} returned a {type(result).__name__}; expected {DATA_EXPECTED}.")
        which = ("training", "test") if len(result) == 2 else ("training", "validation", "test")
        parts = [_as_arrays(p, key=name, which=w) for p, w in zip(result, which)]
        shapes = {tuple(x.shape[1:]) for x, _ in parts}
        if len(shapes) > 1 and opts.input_size is None:
            raise SqueezeError(
                f"`task.dataset` = {name!r} returned {' and '.join(which)} images of shapes {sorted(shapes)}; "
                f"they must match, or set `task.options.input_size`."
            )
        if min(int(y.min()) for _, y in parts) < 0:
            raise SqueezeError(f"`task.dataset` = {name!r} returned negative labels; expected class indices 0, 1, 2, ...")
        num_classes = max(int(y.max()) for _, y in parts) + 1
        if len(parts) == 2:
            # (train, test): the second part is the user's test split; validation comes out of the training part.
            (x, y), (x_test, y_test) = parts
            train, held = split(y.numpy(), test=holdout, seed=seed, what=f"the training part of {name!r}")
            parts = [(x[train], y[train]), (x[held], y[held]), (x_test, y_test)]
        kept = subsample_splits(*(y.numpy() for _, y in parts),
                                limits=(opts.limit, opts.holdout_limit, opts.test_limit), seed=seed)
        arrays = [a for (x, y), keep in zip(parts, kept) for a in (x[keep].numpy(), y[keep].numpy())]
        return task_data(name, *arrays, num_classes=num_classes, image=opts)

    return load
