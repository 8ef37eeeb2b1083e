"""Model families: how to build a teacher or a student, its knobs and its stable layer names.

A family is registered by name (timm's ``@register_model`` habit) and looked up with
:func:`get_family`. Every registered family is covered by the same parametrized tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a name read from a file may be of any length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_family(obj: Any) -> bool:
    return not isinstance(obj, type) and all(callable(getattr(obj, m, None)) for m in ("build", "check_options", "knobs"))


def family_named(
    name: str, *, source: str, family: ModelFamily | Callable[..., Any] | None = None, allow: Sequence[str] = ()
) -> ModelFamily:
    """The family that rebuilds a model whose stored description (``source``) names ``name``; nothing it names is imported.

    A stored name is data, not an instruction: a registered family is looked up by name, and a
    user's ``package.module:factory`` is used only when the caller hands it over, as ``family``
    (the factory itself, or a :class:`ModelFamily` of that name) or by listing its module (or a
    package above it) in ``allow``. Anything else is refused with a SqueezeError before any import.
    """
    if not isinstance(name, str) or not name:
        raise SqueezeError(f"`{source}` names no model family (got {_shown(name)}); it was not written by squeeze.")
    builtin = name in _FAMILIES
    if family is not None:
        if _is_family(family):
            if getattr(family, "name", None) != name:
                raise SqueezeError(
                    f"`{source}` holds a model of family {_shown(name)}, but the family handed over is "
                    f"{_shown(getattr(family, 'name', family))}; pass the family the file names"
                    f"{', or leave `family=` out for a built-in family' if builtin else ''}."
                )
            return family
        if not callable(family):
            raise SqueezeError(f"`family=` must be a model factory or a ModelFamily, but got a {type(family).__name__}.")
        if builtin:
            raise SqueezeError(
                f"`{source}` holds a model of the built-in family {_shown(name)}, but `family=` hands over the "
                f"factory {_shown(family)}; leave `family=` out for a built-in family."
            )
        from ._user import ModuleFamily

        return ModuleFamily(name, factory=family)
    if builtin:
        return _FAMILIES[name]()
    module, sep, attr = name.partition(":")
    if not sep:
        raise SqueezeError(
            f"`{source}` names the model family {_shown(name)}, which is not registered here (registered: "
            f"{list_families()}); import the package that registers it first, or pass the family as `family=`."
        )
    allowed = (allow,) if isinstance(allow, str) else tuple(allow)
    if module and attr and any(isinstance(a, str) and a and (module == a or module.startswith(a + ".")) for a in allowed):
        from ._user import ModuleFamily

        return ModuleFamily(name)
    raise SqueezeError(
        f"`{source}` names the user family {_shown(name)}, and nothing a file names is imported or called; "
        f"to load it, pass its factory as `family=` (for example load_artifact(path, family=make_net)), "
        f"or allow its module with `allow=({_shown(module)},)`, or give the study file on the command line."
    )
