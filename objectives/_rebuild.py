"""The architecture an artifact describes (:class:`Arch`), and rebuilding it without trusting the description.

An artifact's header is data from anywhere: a colleague's file, a database copied from another
machine. Its checksum proves nothing (anyone can recompute it), so every value is checked before it
is used, and the network is first built on PyTorch's ``meta`` device, where tensors have shapes and
no storage. That build runs under a budget of module and parameter registrations (a depth of a
billion blocks stops at the budget, not after an hour), and its layout is compared with the bytes the
file actually holds before a single real tensor is allocated. Only then is storage given to it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import fx
from torch.nn.modules import module as nn_module
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from squeeze.spaces import ModelFamily, family_named, list_families

from ._materialize import fold_batchnorm, remove_channels

ARCH_KEYS = ("family", "options", "student", "in_channels", "num_classes", "input_size", "channels")
MAX_IN_CHANNELS = 4096
MAX_CLASSES = 2**20
MAX_INPUT_VALUES = 2**22
"""Values of one example input (channels x height x width): 16 MiB in float32."""
MAX_OPTION = 2**16
"""The largest number in the options of a registered family (widths, depths): far above any real one."""
MAX_CHANNELS = 2**20
"""Output channels of all layers of a network before pruning, together: pruning walks each channel."""
MAX_REGISTRATIONS = 2**20
"""Modules and parameters a build may register when no payload bounds it."""
MAX_PARAMETERS = 2**26
"""Values of a network built for real before pruning (256 MiB in float32), on the one path that does that."""

FamilyArg = ModelFamily | Callable[..., Any] | None
"""A family handed over by the caller: a :class:`ModelFamily`, a user's factory, or None (a built-in)."""


class TooLarge(ValueError):
    """A build that would exceed its budget; raised from inside the build, which it stops."""


def _int(d: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"`{key}` must be an integer in [{low}, {high}], but got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_arch(d: Any) -> dict[str, Any]:
    """The fields of a stored architecture, each of the right type and within bounds (else a ValueError)."""
    if not isinstance(d, dict) or set(d) != set(ARCH_KEYS):
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"the architecture must have exactly the keys {list(ARCH_KEYS)}, but got {_shown(got)}")
    if not isinstance(d["family"], str) or not d["family"]:
        raise ValueError(f"`family` must be a non-empty string, but got {_shown(d['family'])}")
    if not isinstance(d["options"], dict):
        raise ValueError(f"`options` must be a table, but got {_shown(d['options'])}")
    student = d["student"]
    if not isinstance(student, dict) or not all(isinstance(v, dict) for v in student.values()):
        raise ValueError(f"`student` must be a table of tables, but got {_shown(student)}")
    for kind, knobs in student.items():
        for key, value in knobs.items():
            if not (_finite(value) or isinstance(value, (bool, str))):
                raise ValueError(f"`student.{kind}.{key}` must be a number, a string or a boolean, but got {_shown(value)}")
            if kind == "width" and not (_finite(value) and 0 < value <= 1):
                raise ValueError(f"`student.width.{key}` must be a multiplier in (0, 1], but got {_shown(value)}")
            if kind == "depth" and not (_finite(value) and value > 0):
                raise ValueError(f"`student.depth.{key}` must be a positive number, but got {_shown(value)}")
    in_channels = _int(d, "in_channels", 1, MAX_IN_CHANNELS)
    num_classes = _int(d, "num_classes", 1, MAX_CLASSES)
    size = d["input_size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
            or in_channels * size[0] * size[1] > MAX_INPUT_VALUES):
        raise ValueError(
            f"`input_size` must be two positive integers with at most {MAX_INPUT_VALUES} values an input, "
            f"but got {_shown(size)}"
        )
    channels = d["channels"]
    if not isinstance(channels, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in channels.values()
    ):
        raise ValueError(f"`channels` must map layer names to positive integers, but got {_shown(channels)}")
    return {**d, "in_channels": in_channels, "num_classes": num_classes, "input_size": tuple(size)}


@dataclass(frozen=True)
class Arch:
    """What rebuilds the materialized architecture: family, options, student, kept channels."""

    family: str
    options: Mapping[str, Any]
    student: Mapping[str, Any]
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    channels: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "options": dict(self.options),
            "student": {k: dict(v) for k, v in self.student.items()},
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "channels": dict(self.channels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        """The architecture a header stores; a ValueError when a field is missing, mistyped or out of bounds."""
        d = checked_arch(d)
        return cls(
            family=d["family"],
            options=d["options"],
            student=d["student"],
            in_channels=int(d["in_channels"]),
            num_classes=int(d["num_classes"]),
            input_size=d["input_size"],
            channels=d["channels"],
        )

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, *self.input_size)

    def rebuild_float(self, *, family: FamilyArg = None, allow: Sequence[str] = ()) -> fx.GraphModule:
        """The folded float module with the right shapes, its values zero (they are overwritten on load).

        A built-in family is found by name; a user's family only when handed over as ``family`` (or
        its module listed in ``allow``), never imported because ``self.family`` names it.
        """
        chosen = family_named(self.family, source="the architecture", family=family, allow=allow)
        folded = materialize(self, shape_of(self, chosen), chosen)
        with torch.no_grad():
            for t in (*folded.parameters(), *folded.buffers()):
                t.zero_()
        return folded


_budgets = threading.local()


def _count(*_: Any) -> None:
    """Called on every module and parameter registration in the process; counts only inside :func:`_budget`."""
    left = getattr(_budgets, "left", None)
    if left is not None:
        if left <= 0:
            raise TooLarge(f"the architecture has more than {_budgets.limit} modules and parameters, "
                           "more than its file can hold")
        _budgets.left = left - 1


_installed = threading.Lock()
_hooks: list[Any] = []


def _install_counter() -> None:
    """Register :func:`_count` with torch, once per process, on the first bounded build (not at import).

    Registered for good: adding and removing global hooks around each build would change the dicts
    that another thread's module construction may be iterating over at that moment.
    """
    with _installed:
        if not _hooks:
            _hooks.append(nn_module.register_module_module_registration_hook(_count))
            _hooks.append(nn_module.register_module_parameter_registration_hook(_count))


@contextlib.contextmanager
def _budget(limit: int) -> Iterator[None]:
    """Stop a build in this thread once it registers more than ``limit`` modules and parameters."""
    _install_counter()
    outer = getattr(_budgets, "left", None), getattr(_budgets, "limit", None)
    _budgets.left, _budgets.limit = limit, limit
    try:
        yield
    finally:
        _budgets.left, _budgets.limit = outer


def _bounded_numbers(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _bounded_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            _bounded_numbers(v, where)
    elif _finite(value) and abs(value) > MAX_OPTION:
        raise ValueError(f"`{where}` holds {_shown(value)}, beyond the sane bound of {MAX_OPTION}")


def _checked_student(family: ModelFamily, options: Mapping[str, Any], student: Mapping[str, Any]) -> None:
    """Every knob of ``student`` is one the family has, at one of its choices (widths: any multiplier)."""
    knobs = {(k.kind, k.key): k for k in family.knobs(options, widths=(1.0,))}
    for kind, values in student.items():
        for key, value in values.items():
            knob = knobs.get((kind, key))
            if knob is None:
                raise ValueError(f"`student.{kind}.{key}` is not a knob of family {family.name!r}")
            if kind != "width" and value not in knob.choices:
                raise ValueError(f"`student.{kind}.{key}` must be one of {list(knob.choices)[:8]}, but got {_shown(value)}")


SMALL_TENSOR = 4096
"""Values of a tensor that a build may create for real: what a builder computes its widths with, never a layer."""


class _SmallTensorsReal(TorchFunctionMode):
    """Inside a meta-device build, tensors of at most :data:`SMALL_TENSOR` values are created on the CPU.

    Some builders compute their widths with tensors (torchvision's RegNet rounds them with
    ``torch.round(...).tolist()``), which a meta tensor cannot give. Each new tensor is laid out on the
    meta device first, and only a small one is made again for real, so a build still allocates nothing
    large; the model is moved wholly to the meta device after. Used only when a build on the meta device
    fails: a builder that copies between a large tensor and a small one would find them on two devices.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None:
            laid_out = func(*args, **{**kwargs, "device": "meta"})
            if isinstance(laid_out, torch.Tensor) and laid_out.numel() <= SMALL_TENSOR:
                return func(*args, **{**kwargs, "device": "cpu"})
            return laid_out
        return func(*args, **kwargs)


class Shape(NamedTuple):
    """A network laid out on the meta device: what :func:`shape_of` returns."""

    module: fx.GraphModule
    """The folded network, its tensors without storage."""
    options: dict[str, Any]
    """The family's options, as its ``check_options`` returned them."""
    values: int
    """Values of its parameters and buffers before pruning: what a real build allocates at first."""


def shape_of(arch: Arch, family: ModelFamily, *, registrations: int = MAX_REGISTRATIONS) -> Shape:
    """The folded network ``arch`` describes, on the meta device, with the options that built it.

    Nothing real is allocated. ``registrations`` bounds how many modules and parameters the build
    may register; an architecture beyond it, or whose channels do not fit its layers, is a ValueError.
    """
    options = family.check_options(dict(arch.options))
    if arch.family in list_families():
        # A registered family's knobs enumerate its depths, so their size is bounded before they are listed.
        _bounded_numbers(options, "options")
    student = {k: dict(v) for k, v in arch.student.items()}
    # Built outside any inference mode of the caller: Torch-Pruning traces through autograd.
    with torch.inference_mode(False), torch.device("meta"):
        try:
            with _budget(registrations):
                model = family.build(options, in_channels=arch.in_channels, num_classes=arch.num_classes,
                                     student=student or None)
        except TooLarge:
            raise
        except Exception:  # noqa: BLE001 - a builder that needs real tensors fails in its own way; try it with some
            with _budget(registrations), _SmallTensorsReal():
                model = family.build(options, in_channels=arch.in_channels, num_classes=arch.num_classes,
                                     student=student or None)
            model = model.to("meta")
        _checked_student(family, options, student)
        values = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
        modules = dict(model.named_modules())
        widths = [int(m.weight.shape[0]) for m in modules.values()
                  if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 1]
        if sum(widths) > MAX_CHANNELS:
            raise ValueError(f"the architecture has {sum(widths)} output channels before pruning, more than {MAX_CHANNELS}")
        keep = {}
        for name, count in arch.channels.items():
            weight = getattr(modules.get(name), "weight", None) if name else None
            if not isinstance(weight, torch.Tensor) or weight.dim() < 1:
                raise ValueError(f"`channels` names {_shown(name)}, which is not a layer with weights in this architecture")
            if count > weight.shape[0]:
                raise ValueError(f"`channels.{name}` is {count}, but the layer has {weight.shape[0]} channels to keep from")
            if count != weight.shape[0]:
                keep[name] = list(range(count))
        remove_channels(model, keep, example=arch.example())  # on the meta device too
        return Shape(fold_batchnorm(model), options, values)


def _storage_free(folded: fx.GraphModule) -> bool:
    """True when every tensor of ``folded`` is in its state dict, so loading that state sets all of it."""
    for module in folded.modules():
        if module._non_persistent_buffers_set:
            return False
        if any(isinstance(v, torch.Tensor) for v in vars(module).values()):
            return False  # a traced constant: only a real build gives it its value
    return True


def materialize(arch: Arch, shape: Shape, family: ModelFamily) -> fx.GraphModule:
    """``shape`` (from :func:`shape_of`) with real, uninitialized storage, ready for ``load_state_dict``.

    A network holding tensors that its state dict does not carry (non-persistent buffers, traced
    constants) is built again for real, so that those get the values the family gives them.
    """
    with torch.inference_mode(False):
        if _storage_free(shape.module):
            return shape.module.to_empty(device="cpu")
        # The meta build bounded the layout; the real one is bounded by what it allocates before pruning.
        if shape.values > MAX_PARAMETERS:
            raise ValueError(f"the architecture has {shape.values} values before pruning, more than {MAX_PARAMETERS}")
        model = family.build(shape.options, in_channels=arch.in_channels, num_classes=arch.num_classes,
                             student=arch.student or None)
        modules = dict(model.named_modules())
        keep = {n: list(range(c)) for n, c in arch.channels.items() if modules[n].weight.shape[0] != c}
        remove_channels(model, keep, example=arch.example())
        return fold_batchnorm(model)
