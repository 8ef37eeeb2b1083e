"""A user's own model as a family: ``package.module:factory``, its knobs declared in the study file.

The study file names the factory as the family and declares, under ``[task.model]``, the keyword
arguments that build the teacher and the student knobs::

    [task]
    family = "mypkg.models:make_net"

    [task.model]
    kwargs = { width = 32, blocks = 3 }            # the teacher: make_net(width=32, blocks=3)
    knobs = { width = [8, 16, 32], blocks = [1, 2, 3] }   # a student: any choice of each

The factory returns an ``nn.Module``; it also receives ``in_channels`` and ``num_classes`` when its
signature takes them. A student must keep the teacher's layer names for the layers it keeps (the
search relies on it, as for every family). Layers are found on the traced graph (``_groups``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from torch import nn

from ._errors import SqueezeError
from ._families import Knob
from ._groups import GraphError, discover, topology_key

FACTORY_EXPECTED = "`package.module:factory`, a function importable from this Python environment or the current folder that returns an nn.Module"


def import_object(text: Any, *, key: str, expected: str) -> Callable[..., Any]:
    """The callable named ``package.module:attribute``; a SqueezeError naming ``key`` when it does not import.

    The current folder is searched after the installed packages, so a module next to the study
    file works when ``squeeze`` runs from that folder, and cannot shadow an installed package.
    """
    module_name, sep, attr = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise SqueezeError(f"`{key}` must be {expected}, but got {text!r}.")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an import can fail in any way; each is the same bad input
        reason = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
        raise SqueezeError(f"`{key}` = {text!r} does not import ({reason}); expected {expected}.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SqueezeError(f"`{key}` = {text!r}: module `{module_name}` has no attribute `{attr}`; expected {expected}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SqueezeError(f"`{key}` = {text!r} is a {type(obj).__name__}, not a function; expected {expected}.")
    return obj


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (bool, int, str))


class ModuleFamily:
    """The family ``package.module:factory``: options ``kwargs``, ``knobs`` and ``checkpoint``.

    With ``factory``, that callable is the family and ``name`` is only its label: nothing is
    imported. That is how an artifact that names a user's factory is loaded, the caller handing
    the factory over rather than the file naming what to import.
    """

    def __init__(self, name: str, *, factory: Callable[..., Any] | None = None) -> None:
        self.name = name
        if factory is None:
            factory = import_object(name, key="task.family", expected=FACTORY_EXPECTED)
        elif not callable(factory):
            raise SqueezeError(f"the factory of family {name!r} must be callable, but got a {type(factory).__name__}.")
        self.factory = factory
        self._no_graph: dict[Hashable, str] = {}
        try:
            self._params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            self._params = {}

    def _takes(self, name: str) -> bool:
        return name in self._params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self._params.values())

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        allowed = {"kwargs", "knobs", "checkpoint"}
        unknown = set(options) - allowed
        if unknown:
            raise SqueezeError(
                f"unknown key `task.model.{sorted(unknown)[0]}`; a `package.module:factory` family takes {sorted(allowed)}."
            )
        kwargs = options.get("kwargs", {})
        knobs = options.get("knobs", {})
        for key, table in (("kwargs", kwargs), ("knobs", knobs)):
            if not isinstance(table, Mapping):
                raise SqueezeError(f"`task.model.{key}` must be a table of keyword arguments of {self.name}, but got {table!r}.")
            for arg in table:
                if arg in ("in_channels", "num_classes"):
                    raise SqueezeError(f"`task.model.{key}.{arg}` is set from the task's data; remove it from the study file.")
                if self._params and not self._takes(arg):
                    raise SqueezeError(
                        f"`task.model.{key}.{arg}` is not a keyword argument of {self.name}; "
                        f"it takes {sorted(p for p in self._params if p not in ('in_channels', 'num_classes'))}."
                    )
        for arg, choices in knobs.items():
            if not isinstance(choices, list) or not choices or not all(_scalar(c) for c in choices) or len({type(c) for c in choices}) > 1:
                raise SqueezeError(
                    f"`task.model.knobs.{arg}` must be a non-empty list of choices of one type "
                    f"(numbers, strings or booleans), but got {choices!r}."
                )
        checkpoint = options.get("checkpoint")
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
            raise SqueezeError(f"`task.model.checkpoint` must be a file path string, but got {checkpoint!r}.")
        out = {"kwargs": dict(kwargs), "knobs": {k: list(v) for k, v in knobs.items()}}
        if checkpoint is not None:
            out["checkpoint"] = checkpoint
        return out

    def build(
        self,
        options: Mapping[str, Any],
        *,
        in_channels: int,
        num_classes: int,
        student: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> nn.Module:
        kwargs = dict(options.get("kwargs", {}))
        if student:
            kwargs.update(student.get("kwarg", {}))
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if self._takes(name):
                kwargs[name] = value
        model = self.factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise SqueezeError(f"`task.family` = {self.name!r} returned a {type(model).__name__}; expected {FACTORY_EXPECTED}.")
        return model

    def knobs(self, options: Mapping[str, Any], *, widths: tuple[float, ...]) -> list[Knob]:
        return [Knob("kwarg", arg, tuple(choices)) for arg, choices in options.get("knobs", {}).items()]

    def prunable(self, model: nn.Module) -> list[str]:
        # No cache of groups: a user's forward may depend on keyword arguments that leave no trace in its
        # modules. A failure is remembered, though: tracing a graph Torch-Pruning cannot build can take a
        # minute (until its memory cap), and a network of the same layers fails the same way.
        key = topology_key(model)
        if key in self._no_graph:
            return []
        try:
            return [g.leader for g in discover(model)]
        except GraphError as exc:
            # Nothing of it can be pruned; the study's check says why, and the rest is still searched.
            self._no_graph[key] = str(exc)
            return []

    def graph_error(self, model: nn.Module) -> str | None:
        """Why ``model``'s dependency graph cannot be built (Torch-Pruning's message), or None when it can."""
        self.prunable(model)
        return self._no_graph.get(topology_key(model))

    def quantizable(self, model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
