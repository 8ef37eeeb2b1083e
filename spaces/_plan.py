"""CompressionPlan: the whole description of one candidate, JSON round-trippable."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._errors import SqueezeError

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
"""Bit-widths a layer may take; 32 leaves a layer in float, 16 stores it in half precision."""

INT8_MAX_BITS = 8


def runs_int8(bits: int) -> bool:
    """Whether a layer at ``bits`` runs on int8 kernels: 8 bits or fewer.

    Weights below 8 bits are stored packed at their width but widened to int8 to run, because
    no CPU kernel takes narrower integers; 16 bits is half precision and 32 is float.
    """
    return int(bits) <= INT8_MAX_BITS


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted((mapping or {}).items())))


@dataclass(frozen=True)
class CompressionPlan:
    """One candidate: the student's knobs, per-layer sparsity and per-layer bit-widths.

    ``student`` maps a family knob to its value (``{"width": {"stage0": 0.5}, "depth": {...}}``),
    ``sparsity`` maps a stable layer name to the fraction of its output channels removed, and
    ``bits`` maps a stable layer name to its bit-width (32 = left in float). Layers that a
    mapping does not name are left alone.
    """

    student: Mapping[str, Mapping[str, float | int]] = field(default_factory=dict)
    sparsity: Mapping[str, float] = field(default_factory=dict)
    bits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for layer, ratio in self.sparsity.items():
            if not 0.0 <= float(ratio) < 1.0:
                raise SqueezeError(
                    f"sparsity of layer `{layer}` must be in [0, 1), but got {ratio!r}."
                )
        for layer, bits in self.bits.items():
            if int(bits) not in ALLOWED_BITS:
                raise SqueezeError(
                    f"bits of layer `{layer}` must be one of {list(ALLOWED_BITS)}, but got {bits!r}."
                )
        object.__setattr__(
            self, "student", _frozen({k: _frozen(v) for k, v in self.student.items()})
        )
        object.__setattr__(self, "sparsity", _frozen({k: float(v) for k, v in self.sparsity.items()}))
        object.__setattr__(self, "bits", _frozen({k: int(v) for k, v in self.bits.items()}))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, ready for ``json.dumps``."""
        return {
            "student": {k: dict(v) for k, v in self.student.items()},
            "sparsity": dict(self.sparsity),
            "bits": dict(self.bits),
        }

    def to_json(self) -> str:
        """A canonical JSON string (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        unknown = set(data) - {"student", "sparsity", "bits"}
        if unknown:
            raise SqueezeError(
                f"a plan has keys student, sparsity and bits, but got {sorted(unknown)}."
            )
        return cls(
            student=data.get("student", {}),
            sparsity=data.get("sparsity", {}),
            bits=data.get("bits", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def int8_layers(self) -> list[str]:
        """The layers this plan runs on int8 kernels (:func:`runs_int8`), sorted."""
        return sorted(name for name, bits in self.bits.items() if runs_int8(bits))

    def mean_bits(self) -> float:
        """Unweighted mean bit-width over the layers the plan names (32 when none)."""
        return sum(self.bits.values()) / len(self.bits) if self.bits else 32.0

    def mean_sparsity(self) -> float:
        """Unweighted mean sparsity over the layers the plan names (0 when none)."""
        return sum(self.sparsity.values()) / len(self.sparsity) if self.sparsity else 0.0
