"""Model families: how to build a teacher or a student, its knobs and its stable layer names.

A family is registered by name (timm's ``@register_model`` habit) and looked up with
:func:`get_family`. Every registered family is covered by the same parametrized tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from ._errors import SqueezeError


@dataclass(frozen=True)
class Knob:
    """One student knob: ``kind`` is ``width`` or ``depth``, ``key`` the stage it acts on."""

    kind: str
    key: str
    choices: tuple[float | int, ...]


class ModelFamily(Protocol):
    """What the search needs to know about a family of networks.

    Life cycle: ``check_options`` validates the study file's ``[task.model]`` table once;
    ``build`` makes the teacher (``student=None``) or a student; ``knobs`` lists the student
    knobs the space may search; ``prunable`` and ``quantizable`` name the layers of a built
    model by stable names that are the same in the teacher and in every student.
    """

    name: str

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]: ...

    def build(
        self,
        options: Mapping[str, Any],
        *,
        in_channels: int,
        num_classes: int,
        student: Mapping[str, Mapping[str, float | int]] | None = None,
    ) -> nn.Module: ...

    def knobs(self, options: Mapping[str, Any], *, widths: tuple[float, ...]) -> list[Knob]: ...

    def prunable(self, model: nn.Module) -> list[str]: ...

    def quantizable(self, model: nn.Module) -> list[str]: ...


_FAMILIES: dict[str, Callable[[], ModelFamily]] = {}


def register_family(name: str) -> Callable[[Callable[[], ModelFamily]], Callable[[], ModelFamily]]:
    """Class decorator: register a family under ``name``."""

    def wrap(factory: Callable[[], ModelFamily]) -> Callable[[], ModelFamily]:
        _FAMILIES[name] = factory
        return factory

    return wrap


def list_families() -> list[str]:
    """Names of the registered families, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered under ``name``, or a user's factory named ``package.module:factory``."""
    if isinstance(name, str) and ":" in name:
        from ._user import ModuleFamily

        return ModuleFamily(name)
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise SqueezeError(
            f"`task.family` must be one of {list_families()}, but got {name!r}; a user's model is named `package.module:factory`."
        ) from None
