"""The joint space: student knobs, per-layer sparsity and per-layer bit-widths.

Parameters are named ``student.<kind>.<key>``, ``sparsity.<layer>`` and ``bits.<layer>`` after the
teacher's stable layer names, and every trial suggests all of them, so the space has a fixed shape
that every sampler handles. Layers a student drops are then left out of its plan.

One more parameter, ``precision`` (``"per-layer"`` or ``"float"``), is there when the bit-widths
offer both float and integer choices: ``"float"`` leaves every layer in float whatever its
``bits.<layer>`` says. Without it an all-float plan needs every layer to draw 32 independently
(``(1/4)**5`` for five layers and four choices), yet on small models at batch 1 int8 kernels are
slower than float ones, so the fastest plans are all-float and a per-layer search almost never
reaches them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from ._errors import SqueezeError
from ._families import Knob, ModelFamily
from ._narrow import Narrowing
from ._plan import ALLOWED_BITS, CompressionPlan

PRECISIONS = ("per-layer", "float")
"""Choices of the ``precision`` parameter: each layer's own bit-width, or every layer in float."""


class Suggester(Protocol):
    """The part of ``optuna.Trial`` the space uses."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...


@dataclass(frozen=True)
class SparsityRange:
    """A continuous sparsity range ``[low, high]`` with an optional step."""

    low: float
    high: float
    step: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.low <= self.high < 1.0):
            raise SqueezeError(
                f"`space.sparsity` range must satisfy 0 <= low <= high < 1, but got low={self.low}, high={self.high}."
            )
        if self.step is not None and self.step <= 0:
            raise SqueezeError(f"`space.sparsity.step` must be positive, but got {self.step}.")


@dataclass(frozen=True)
class SpaceSpec:
    """What may be searched; validated once when the study file is read."""

    sparsity: tuple[float, ...] | SparsityRange = (0.0, 0.25, 0.5)
    bits: tuple[int, ...] = (4, 8, 32)
    width: tuple[float, ...] = (0.5, 0.75, 1.0)
    depth: bool = True
    prune: bool = True
    quantize: bool = True
    float_choice: bool = True
    """Offer the whole-model ``precision`` choice (every layer float) beside per-layer bit-widths."""

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, tuple):
            if not self.sparsity:
                raise SqueezeError("`space.sparsity` must list at least one choice, but the list is empty.")
            for s in self.sparsity:
                if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                    raise SqueezeError(
                        f"`space.sparsity` choices must be numbers in [0, 1), but got {s!r}."
                    )
        if not self.bits:
            raise SqueezeError("`space.bits` must list at least one bit-width, but the list is empty.")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or b not in ALLOWED_BITS:
                raise SqueezeError(
                    f"`space.bits` choices must be in {{2..8, 16, 32}}, but got {b!r}."
                )
        if not self.width:
            raise SqueezeError("`space.width` must list at least one multiplier, but the list is empty.")
        for w in self.width:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w <= 1.0:
                raise SqueezeError(f"`space.width` multipliers must be in (0, 1], but got {w!r}.")


class JointSpace:
    """Turns a sampler's parameters into a :class:`CompressionPlan` for one family.

    ``narrowing`` takes out what the study found it cannot compress (:mod:`._narrow`): those
    parameters are never suggested, so their layers stay unpruned, in float, or at the teacher's knob.
    """

    def __init__(
        self,
        family: ModelFamily,
        options: Mapping[str, Any],
        spec: SpaceSpec,
        *,
        teacher: nn.Module,
        narrowing: Narrowing | None = None,
    ) -> None:
        self.family = family
        self.options = dict(options)
        self.spec = spec
        self.narrowing = narrowing = narrowing or Narrowing()
        knobs = family.knobs(options, widths=spec.width) if (spec.width != (1.0,) or spec.depth) else []
        if not spec.depth:
            knobs = [k for k in knobs if k.kind != "depth"]
        self.knobs: list[Knob] = []
        for k in knobs:
            kept = narrowing.choices(f"student.{k.kind}.{k.key}", k.choices)
            if kept:
                self.knobs.append(k if kept == tuple(k.choices) else Knob(k.kind, k.key, kept))
        # The graph is not traced at all when the study found that it cannot be.
        prunable = family.prunable(teacher) if spec.prune and narrowing.prunes() else []
        self.prunable = [layer for layer in prunable if narrowing.keeps(f"sparsity.{layer}")]
        quantizable = family.quantizable(teacher) if spec.quantize else []
        self.quantizable = [layer for layer in quantizable if narrowing.keeps(f"bits.{layer}")]
        self.float_choice = bool(
            self.quantizable and spec.float_choice and 32 in spec.bits and any(b < 32 for b in spec.bits)
        )

    def parameter_names(self) -> list[str]:
        """Every parameter name, in suggestion order."""
        return (
            [f"student.{k.kind}.{k.key}" for k in self.knobs]
            + [f"sparsity.{layer}" for layer in self.prunable]
            + [f"bits.{layer}" for layer in self.quantizable]
            + (["precision"] if self.float_choice else [])
        )

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """Ask ``trial`` for every parameter of the space; returns the parameters."""
        params: dict[str, Any] = {}
        for knob in self.knobs:
            name = f"student.{knob.kind}.{knob.key}"
            params[name] = trial.suggest_categorical(name, list(knob.choices))
        for layer in self.prunable:
            name = f"sparsity.{layer}"
            if isinstance(self.spec.sparsity, SparsityRange):
                r = self.spec.sparsity
                params[name] = trial.suggest_float(name, r.low, r.high, step=r.step)
            else:
                params[name] = trial.suggest_categorical(name, list(self.spec.sparsity))
        for layer in self.quantizable:
            name = f"bits.{layer}"
            params[name] = trial.suggest_categorical(name, list(self.spec.bits))
        if self.float_choice:
            params["precision"] = trial.suggest_categorical("precision", list(PRECISIONS))
        return params

    def plan(self, params: Mapping[str, Any], *, student_layers: Sequence[str] | None = None) -> CompressionPlan:
        """The plan for ``params``; ``student_layers`` (if given) drops layers the student lacks."""
        student: dict[str, dict[str, float | int]] = {}
        sparsity: dict[str, float] = {}
        bits: dict[str, int] = {}
        precision = params.get("precision", "per-layer")
        if precision not in PRECISIONS:
            raise SqueezeError(f"parameter `precision` must be one of {list(PRECISIONS)}, but got {precision!r}.")
        for name, value in params.items():
            group, _, rest = name.partition(".")
            if group == "student":
                kind, _, key = rest.partition(".")
                student.setdefault(kind, {})[key] = value
            elif group == "sparsity":
                sparsity[rest] = float(value)
            elif group == "bits":
                bits[rest] = 32 if precision == "float" else int(value)
            elif name == "precision":
                continue
            else:
                raise SqueezeError(f"parameter `{name}` is not part of the joint space.")
        if student_layers is not None:
            keep = set(student_layers)
            sparsity = {k: v for k, v in sparsity.items() if k in keep}
            bits = {k: v for k, v in bits.items() if k in keep}
        return CompressionPlan(student=student, sparsity=sparsity, bits=bits)

    def plan_for(self, params: Mapping[str, Any], *, in_channels: int, num_classes: int) -> CompressionPlan:
        """The plan for ``params``, restricted to the layers of the student it describes."""
        rough = self.plan(params)
        student = self.family.build(
            self.options, in_channels=in_channels, num_classes=num_classes, student=rough.student
        )
        # A space that prunes nothing does not trace the student's graph (slow, or impossible, on some networks).
        layers = set(self.family.quantizable(student)) | (set(self.family.prunable(student)) if self.prunable else set())
        return self.plan(params, student_layers=sorted(layers))

    def uniform_params(self, *, sparsity: float, bits: int, width: float = 1.0) -> dict[str, Any]:
        """Parameters of a uniform policy (every layer the same); the full-depth student."""
        params: dict[str, Any] = {}
        for knob in self.knobs:
            params[f"student.{knob.kind}.{knob.key}"] = width if knob.kind == "width" else max(knob.choices)
        for layer in self.prunable:
            params[f"sparsity.{layer}"] = sparsity
        for layer in self.quantizable:
            params[f"bits.{layer}"] = bits
        if self.float_choice:
            params["precision"] = "per-layer"
        return params
