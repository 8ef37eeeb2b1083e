"""The task registry: :class:`TaskData`, what a loader returns, and registering, listing and loading tasks.

A task is a loader registered by name (timm's ``@register_model`` habit) and called through
:func:`load_task`. The built-in loaders live beside this module, one file per kind of source:
``_digits.py``, ``_idx.py`` (MNIST, Fashion-MNIST), ``_cifar.py``, ``_imagefolder.py``; a user's
``package.module:function`` is wrapped by ``_user_tasks.py``. Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from squeeze.spaces import SqueezeError


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's three splits: ``x`` is float32 ``N, C, H, W``, ``y`` is int64 ``N``.

    - ``x_train``: training data (the teacher, distillation, fine-tuning, calibration);
    - ``x_holdout``: the validation split, which scores every trial and so chooses the front;
    - ``x_test``: the test split, which nothing in a search reads: it reports finished models only.

    The three share no sample and one normalisation, fitted on ``x_train``. ``eq=False`` because
    comparing tensors field by field is ambiguous.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_holdout: torch.Tensor = field(repr=False)
    y_holdout: torch.Tensor = field(repr=False)
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    x_test: torch.Tensor = field(repr=False, kw_only=True)
    y_test: torch.Tensor = field(repr=False, kw_only=True)
    mean: tuple[float, ...] | None = field(default=None, kw_only=True)
    std: tuple[float, ...] | None = field(default=None, kw_only=True)
    """The per-channel normalisation ``x = (pixels - mean) / std`` on pixels in [0, 1], where the
    loader knows it: an exported model says in its metadata what input it expects."""

    def __post_init__(self) -> None:
        # A registered loader may come from outside this package, so check its output once here
        # rather than fail deep inside a training loop.
        shape = (self.in_channels, *self.input_size)
        for part in ("train", "holdout", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.dtype != torch.float32 or x.dim() != 4 or tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"`x_{part}` of task {self.name!r} must be float32 of shape (N, {', '.join(map(str, shape))}), "
                    f"but got {x.dtype} of shape {tuple(x.shape)}."
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise ValueError(
                    f"`y_{part}` of task {self.name!r} must be int64 of shape ({len(x)},), "
                    f"but got {y.dtype} of shape {tuple(y.shape)}."
                )
            if len(y) == 0:
                raise ValueError(f"`{part}` part of task {self.name!r} must not be empty, but has 0 samples.")


class TaskLoader(Protocol):
    """A registered loader: checks its own ``options`` and returns the task's data.

    ``seed``, ``holdout`` and ``test`` arrive already checked; ``data_dir`` is a ``Path`` or ``None``.
    A loader whose source has a test split of its own (MNIST's ``t10k``, CIFAR's test batch, an
    ImageFolder ``test/``) returns it as the test split and ignores ``test``; else it carves the
    test split first (``test`` of the samples), then the validation split (``holdout`` of the rest).
    """

    def __call__(
        self, options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None
    ) -> TaskData: ...


_TASKS: dict[str, TaskLoader] = {}

DEFAULT_TEST = 0.2
"""The share of a task's samples carved out as its test split when it has none of its own."""


def register_task(name: str) -> Callable[[TaskLoader], TaskLoader]:
    """Function decorator: register a task loader under ``name``."""

    def wrap(loader: TaskLoader) -> TaskLoader:
        _TASKS[name] = loader
        return loader

    return wrap


def unregister_task(name: str) -> None:
    """Remove task ``name`` from the registry (a test's own task, say); unknown names are ignored."""
    _TASKS.pop(name, None)


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def load_task(
    name: str,
    *,
    options: Mapping[str, Any],
    seed: int,
    holdout: float,
    test: float = DEFAULT_TEST,
    data_dir: str | Path | None,
) -> TaskData:
    """Load task ``name``: its training, validation and test splits, normalised on the training part.

    ``test`` is the fraction of the samples carved out as the test split when the task has no test
    split of its own; ``holdout`` is the fraction of the rest held out for validation. ``options``
    is the study file's ``[task.options]`` table; ``data_dir`` is the folder the task reads
    (``task.data``), ignored by tasks that bring their own data.
    """
    loader = task_loader(name)
    if not isinstance(options, Mapping):
        raise SqueezeError(f"`task.options` must be a table, but got {options!r}.")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise SqueezeError(f"`task.holdout` must be a fraction strictly between 0 and 1, but got {holdout!r}.")
    if isinstance(test, bool) or not isinstance(test, (int, float)) or not 0 < test < 1:
        raise SqueezeError(f"`task.test` must be a fraction strictly between 0 and 1, but got {test!r}.")
    # sklearn's random_state and numpy's generators both want a non-negative integer.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SqueezeError(f"`seed` must be an integer in [0, 2**32), but got {seed!r}.")
    return loader(options, seed=seed, holdout=float(holdout), test=float(test),
                  data_dir=None if data_dir is None else Path(data_dir))


def task_loader(name: str) -> TaskLoader:
    """The loader of task ``name``: a registered name, or a user's ``package.module:function``.

    Raises a SqueezeError naming ``task.dataset`` when the name is unknown or does not import.
    """
    if isinstance(name, str) and ":" in name:
        # Imported here: the user-task wrapper builds TaskData, so it imports this module.
        from ._user_tasks import user_task

        return user_task(name)
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise SqueezeError(
            f"`task.dataset` must be one of {list_tasks()}, but got {name!r}; a user's data set is named `package.module:function`."
        ) from None
