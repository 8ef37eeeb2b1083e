"""A teacher's weights from a user's checkpoint: a state dict, read without unpickling code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import SqueezeError

KEY = "task.model.checkpoint"


def checkpoint_of(options: Mapping[str, Any]) -> str | None:
    """The checkpoint path a family's ``[task.model]`` options name, if any."""
    value = options.get("checkpoint")
    return value if isinstance(value, str) and value else None


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if hasattr(t, "shape") else type(t).__name__


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a plain mapping of tensors into ``model`` (strict), as a state dict the model wrote would load.

    A state dict carries each module's format version in ``_metadata``, and some torchvision modules
    (MNASNet) refuse one without it; weights kept as plain tensors (safetensors, a checkpoint) lose it, and
    the freshly built model of the same family has the same versions.
    """
    full = OrderedDict(state)
    full._metadata = getattr(model.state_dict(), "_metadata", OrderedDict())  # type: ignore[attr-defined]
    model.load_state_dict(full, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path, *, family: str) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` (strictly); a SqueezeError says what does not fit.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, so
    a checkpoint cannot run code. A ``{"state_dict": ...}`` wrapper and DataParallel's ``module.``
    prefix are accepted.
    """
    p = Path(path)
    expected = model.state_dict()
    example = next(iter(expected.items()), None)
    wanted = (
        f"a state dict of {len(expected)} tensors for family {family!r}"
        + (f", such as `{example[0]}` of shape {tuple(example[1].shape)}" if example else "")
    )
    if not p.is_file():
        raise SqueezeError(f"`{KEY}` = `{p}` is not a file; expected {wanted}, saved with torch.save.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same bad input
        raise SqueezeError(
            f"`{KEY}` file `{p}` cannot be read with torch.load(weights_only=True) ({type(exc).__name__}); expected {wanted}."
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SqueezeError(f"`{KEY}` file `{p}` holds a {type(state).__name__}, not a mapping of names to tensors; expected {wanted}.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"`{k}` has shape {_shape(state[k])} in the file but {tuple(expected[k].shape)} in the model"
            + (f" ({len(mismatched)} tensors differ in shape)" if len(mismatched) > 1 else "")
        )
    if missing:
        problems.append(f"{len(missing)} tensors are missing, such as `{missing[0]}`")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not in the model, such as `{unexpected[0]}`")
    if problems:
        raise SqueezeError(
            f"`{KEY}` file `{p}` does not fit the teacher that `task.model` describes: {'; '.join(problems)}; expected {wanted}."
        )
    load_weights(model, state)
    return model
