"""What a study takes out of its joint space: the parts of a network that cannot be compressed.

A user's network may have a group whose channels cannot be removed, a layer that no int8 kernel
takes, or a dependency graph that cannot be traced at all. The study's check (before any trial)
and failed trials (during the search) find such parts; each becomes a :class:`Removal`, and the
joint space leaves its parameter out (:class:`Narrowing`), so the search goes on over the rest.

A removal names a parameter of the joint space:

- ``sparsity``: every ``sparsity.<layer>``, when the dependency graph cannot be built;
- ``sparsity.<layer>``: one group, which then keeps all its channels;
- ``bits.<layer>``: one layer, which then stays in float;
- ``student.<kind>.<key>`` with a ``choice``: one choice of a student knob (without one: the knob).

Removing a parameter, not changing its choices, keeps every Optuna distribution of a study the
same from its first trial to its last; only the check, which runs before the first trial, removes
single choices of a knob.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALL_PRUNING = "sparsity"
"""The parameter a removal names when no group can be pruned (the dependency graph cannot be built)."""


@dataclass(frozen=True)
class Removal:
    """One part of the space taken out: which parameter (and choice), at which step, and the library's message."""

    parameter: str
    step: str
    reason: str
    choice: Any = None
    """A student knob's choice; None removes the whole parameter."""
    trial: int | None = None
    """The trial whose failure found it; None when the check before the search did."""

    def describe(self) -> str:
        """One line: the part, the step that failed, and why (the library's message)."""
        part = "pruning (every group)" if self.parameter == ALL_PRUNING else self.parameter
        if self.choice is not None:
            part = f"{part} = {self.choice!r}"
        found = "check" if self.trial is None else f"trial {self.trial}"
        return f"{part}: {self.step} failed ({found}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "step": self.step, "reason": self.reason, "choice": self.choice,
                "trial": self.trial}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Removal:
        return cls(parameter=str(d["parameter"]), step=str(d["step"]), reason=str(d["reason"]),
                   choice=d.get("choice"), trial=d.get("trial"))


@dataclass(frozen=True)
class Narrowing:
    """The removals a joint space applies; the empty narrowing leaves the space whole."""

    removals: tuple[Removal, ...] = ()

    def prunes(self) -> bool:
        """False when pruning is off for the whole study."""
        return all(r.parameter != ALL_PRUNING for r in self.removals)

    def keeps(self, parameter: str) -> bool:
        """Whether ``parameter`` (as a whole) stays in the space."""
        if parameter.startswith("sparsity.") and not self.prunes():
            return False
        return all(r.parameter != parameter or r.choice is not None for r in self.removals)

    def choices(self, parameter: str, choices: Sequence[Any]) -> tuple[Any, ...]:
        """The choices of ``parameter`` that stay (none when the parameter itself is removed)."""
        if not self.keeps(parameter):
            return ()
        gone = [r.choice for r in self.removals if r.parameter == parameter and r.choice is not None]
        return tuple(c for c in choices if c not in gone)

    def with_removals(self, removals: Iterable[Removal]) -> Narrowing:
        """This narrowing and ``removals``; a part already removed keeps its first reason."""
        seen = {(r.parameter, r.choice) for r in self.removals}
        added = []
        for r in removals:
            if (r.parameter, r.choice) not in seen:
                seen.add((r.parameter, r.choice))
                added.append(r)
        return Narrowing(self.removals + tuple(added))

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.removals]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]] | None) -> Narrowing:
        return cls(tuple(Removal.from_dict(d) for d in items or ()))
