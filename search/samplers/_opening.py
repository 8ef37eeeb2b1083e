"""What a study opens with: the uniform references.

Rule: **references** (:func:`reference_params`) are the uniform policies a person tries first: every
layer the same bits and sparsity (:data:`REFERENCE_GRID`), the full student; in a quantized space,
those whose bit-width it does not offer are left out. Why: every front is compared with them. They
are the baseline, not targets a sampler chases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from squeeze.spaces import JointSpace

if TYPE_CHECKING:
    # Annotations only: the study file's module imports this package for the sampler names.
    from .._spec import StudySpec

REFERENCE_GRID = ((8, 0.0), (4, 0.0), (8, 0.5), (4, 0.5))
"""Uniform policies a person would try first: (bits, sparsity) for every layer, full width."""


def reference_params(spec: StudySpec, space: JointSpace) -> list[tuple[str, dict[str, Any]]]:
    """The uniform references that ``spec`` allows, as (label, parameters)."""
    out = []
    for bits, sparsity in REFERENCE_GRID:
        if bits not in spec.space.bits and spec.space.quantize:
            continue
        out.append((f"uniform {bits}-bit, sparsity {sparsity:g}", space.uniform_params(sparsity=sparsity, bits=bits)))
    return out
