"""Checking a task's ``[task.options]``: the keys every image task takes, and plain integer options."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from squeeze.spaces import SqueezeError


def check_options(task: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, int | None]:
    """Reject unknown keys; every allowed key is an optional positive integer."""
    for key in options:
        if key not in allowed:
            allowed_text = f"the allowed keys are {sorted(allowed)}" if allowed else "it takes no options"
            raise SqueezeError(f"`task.options.{key}` is not an option of task {task!r}; {allowed_text}.")
    checked: dict[str, int | None] = {}
    for key in allowed:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SqueezeError(f"`task.options.{key}` must be a positive integer, but got {value!r}.")
        checked[key] = value
    return checked


IMAGE_OPTIONS = ("holdout_limit", "input_size", "limit", "mean", "std", "test_limit")
"""``[task.options]`` keys every image task takes."""


@dataclass(frozen=True)
class ImageOptions:
    """Checked image-task options: sample limits per split, the input size and a fixed normalisation."""

    limit: int | None = None
    holdout_limit: int | None = None
    test_limit: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def image_options(task: str, options: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> ImageOptions:
    """Check the image options of ``task`` (``extra`` keys are left to the loader to check)."""
    allowed = (*IMAGE_OPTIONS, *extra)
    check_options(task, {k: v for k, v in options.items() if k not in ("input_size", "mean", "std", *extra)}, allowed)
    size = options.get("input_size")
    if size is not None:
        pair = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(pair, list) or len(pair) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in pair
        ):
            raise SqueezeError(
                f"`task.options.input_size` must be a positive integer or a list [height, width] of two, but got {size!r}."
            )
        size = (pair[0], pair[1])
    stats: dict[str, tuple[float, ...] | None] = {}
    for key in ("mean", "std"):
        value = options.get(key)
        if value is None:
            stats[key] = None
            continue
        values = [value] if not isinstance(value, list) else value
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise SqueezeError(f"`task.options.{key}` must be a number or a list of numbers (one per channel), but got {value!r}.")
        if key == "std" and min(values) <= 0:
            raise SqueezeError(f"`task.options.std` must be positive, but got {value!r}.")
        stats[key] = tuple(float(v) for v in values)
    if (stats["mean"] is None) != (stats["std"] is None):
        given, missing = ("mean", "std") if stats["std"] is None else ("std", "mean")
        raise SqueezeError(f"`task.options.{given}` is given without `task.options.{missing}`; give both or neither.")
    return ImageOptions(
        limit=options.get("limit"), holdout_limit=options.get("holdout_limit"), test_limit=options.get("test_limit"),
        input_size=size,
        mean=stats["mean"], std=stats["std"], extra={k: options[k] for k in extra if k in options},
    )
