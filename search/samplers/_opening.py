"""What a study opens with: the uniform references, and the ``auto`` sampler's uniform anchors.

Rules:

- **References** (:func:`reference_params`) are the uniform policies a person tries first: every
  layer the same bits and sparsity (:data:`REFERENCE_GRID`), the full student; in a quantized
  space, those whose bit-width it does not offer are left out. Why: every front is compared with them.
- **Anchors** (:func:`anchor_params`) are ``auto``'s start-up trials in place of random draws:
  uniform policies at :data:`ANCHOR_BITS`, spread over the space's student widths and sparsities
  with the ends of both axes kept. Why: the model starts from the axis along which uniform policies
  trade accuracy for size and speed, and searches per-layer departures from it.
- **The float anchor.** Where the space offers ``precision = "float"``, the last anchor is the
  float plan at the middle sparsity and full width. Why: whether int8 kernels beat float depends on
  the machine, and where they do not, the 4-bit anchors do not lead to the front's fast end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from squeeze.spaces import JointSpace, SparsityRange

if TYPE_CHECKING:
    # Annotations only: the study file's module imports this package for the sampler names.
    from .._spec import StudySpec

REFERENCE_GRID = ((8, 0.0), (4, 0.0), (8, 0.5), (4, 0.5))
"""Uniform policies a person would try first: (bits, sparsity) for every layer, full width."""
ANCHOR_BITS = 4
"""Bit-width of the anchors: the lowest at which weights usually keep a CNN's accuracy."""


def reference_params(spec: StudySpec, space: JointSpace) -> list[tuple[str, dict[str, Any]]]:
    """The uniform references that ``spec`` allows, as (label, parameters)."""
    out = []
    for bits, sparsity in REFERENCE_GRID:
        if bits not in spec.space.bits and spec.space.quantize:
            continue
        out.append((f"uniform {bits}-bit, sparsity {sparsity:g}", space.uniform_params(sparsity=sparsity, bits=bits)))
    return out


def anchor_params(spec: StudySpec, space: JointSpace, *, slots: int,
                  taken: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``slots`` uniform policies spread over the space's student widths and sparsities.

    Every layer gets the same sparsity and :data:`ANCHOR_BITS` bits (or the nearest allowed
    bit-width above, else the widest), every stage the same width, the full depth. Policies equal
    to one in ``taken`` (the references) are left out; when there are more than ``slots``, an
    evenly spaced selection is kept, so that the ends of both axes are among them. Where the space
    offers ``precision = "float"`` and there are two slots or more, the last one is the float plan
    at the middle sparsity and full width.
    """
    allowed = sorted(spec.space.bits)
    bits = next((b for b in allowed if b >= ANCHOR_BITS), allowed[-1])
    widths = sorted({float(w) for w in spec.space.width}, reverse=True) if space.knobs else [1.0]
    sp = spec.space.sparsity
    if isinstance(sp, SparsityRange):
        if sp.step:
            # The middle step of the grid low, low + step, ... that the range suggests from.
            mid = round(sp.low + (int(round((sp.high - sp.low) / sp.step)) // 2) * sp.step, 10)
        else:
            mid = (sp.low + sp.high) / 2
        levels = sorted({sp.low, mid})
    else:
        levels = sorted(set(sp))
    if not space.prunable:
        levels = levels[:1]
    candidates, seen = [], list(taken)
    for width in widths:
        for sparsity in levels:
            params = space.uniform_params(sparsity=sparsity, bits=bits, width=width)
            if params in seen:
                continue
            seen.append(params)
            label = f"uniform {bits}-bit, sparsity {sparsity:g}, width {width:g}"
            candidates.append((label, params))
    if slots <= 0:
        return []
    if space.float_choice and slots >= 2:
        # Whether int8 kernels beat float depends on the machine, so one anchor starts the float side.
        middle = levels[len(levels) // 2]
        params = {**space.uniform_params(sparsity=middle, bits=bits, width=widths[0]), "precision": "float"}
        if params not in seen:
            label = f"uniform float, sparsity {middle:g}, width {widths[0]:g}"
            return [*_spread(candidates, slots - 1), (label, params)]
    return _spread(candidates, slots)


def _spread(candidates: list, slots: int) -> list:
    """``slots`` of ``candidates``, evenly spaced with both ends (all of them when they fit)."""
    if len(candidates) <= slots:
        return candidates
    if slots == 1:
        return candidates[:1]
    step = (len(candidates) - 1) / (slots - 1)
    return [candidates[round(i * step)] for i in range(slots)]
