"""NNI behind a small interface: channel masks from a pruner, weight scales from a quantizer.

Only this module imports NNI, so the rest of the project does not change if it is replaced.
Pruners and quantizers are registered by name; the CLI lists them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from squeeze.spaces import SqueezeError

TrainStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, x, y) -> loss``: one training loss, used by pruners and quantizers that train."""

Batches = Callable[[], "Any"]
"""Returns an iterator of ``(x, y)`` training batches."""

logging.getLogger("nni").setLevel(logging.ERROR)


def _nni_pruners() -> dict[str, Any]:
    from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, TaylorPruner

    return {"l1": L1NormPruner, "l2": L2NormPruner, "fpgm": FPGMPruner, "taylor": TaylorPruner}


def _nni_quantizers() -> dict[str, Any]:
    from nni.compression.quantization import LsqQuantizer, PtqQuantizer, QATQuantizer

    return {"qat": QATQuantizer, "ptq": PtqQuantizer, "lsq": LsqQuantizer}


PRUNERS = ("l1", "l2", "fpgm", "taylor")
"""Registered pruner names (structured: whole output channels, so they can be removed)."""

QUANTIZERS = ("qat", "ptq", "lsq")
"""Registered quantizer names."""


@dataclass(frozen=True)
class CompressSpec:
    """Which NNI pruner and quantizer a study uses, and channel rounding."""

    pruner: str = "l1"
    quantizer: str = "qat"
    round_channels: int = 1

    def __post_init__(self) -> None:
        if self.pruner not in PRUNERS:
            raise SqueezeError(f"`compress.pruner` must be one of {list(PRUNERS)}, but got {self.pruner!r}.")
        if self.quantizer not in QUANTIZERS:
            raise SqueezeError(
                f"`compress.quantizer` must be one of {list(QUANTIZERS)}, but got {self.quantizer!r}."
            )
        if isinstance(self.round_channels, bool) or not isinstance(self.round_channels, int) or self.round_channels < 1:
            raise SqueezeError(
                f"`compress.round_channels` must be a positive integer, but got {self.round_channels!r}."
            )


def _evaluator(model: nn.Module, *, step: TrainStep, data: Batches, lr: float, example: torch.Tensor) -> Any:
    import nni
    from nni.compression import TorchEvaluator

    def training_step(batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> torch.Tensor:
        return step(model, batch[0], batch[1])

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        stream = data()
        for _ in range(max_steps or 1):
            batch = next(stream)
            loss = training_step(batch, model)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"the loss diverged to {float(loss)} inside the NNI compressor")
            optimizers.zero_grad()
            loss.backward()
            optimizers.step()

    def evaluating_func(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            stream = data()
            for _ in range(4):
                xb, _ = next(stream)
                model(xb)
        return 0.0

    optimizer = nni.trace(torch.optim.Adam)(model.parameters(), lr=lr)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=example, evaluating_func=evaluating_func)


def channel_keep(
    model: nn.Module,
    sparsity: Mapping[str, float],
    *,
    method: str,
    round_to: int = 1,
    step: TrainStep | None = None,
    data: Batches | None = None,
    example: torch.Tensor,
) -> dict[str, list[int]]:
    """Indices of the output channels each layer keeps, chosen by the NNI pruner ``method``.

    A layer always keeps at least one channel, and kept counts are rounded up to a multiple of
    ``round_to`` (never above the layer's width).
    """
    layers = {name: ratio for name, ratio in sparsity.items() if ratio > 0}
    if not layers:
        return {}
    modules = dict(model.named_modules())
    config = [{"op_names": [name], "sparse_ratio": float(ratio)} for name, ratio in layers.items()]
    cls = _nni_pruners()[method]
    if method == "taylor":
        if step is None or data is None:
            raise ValueError("the taylor pruner needs a training step and data")
        evaluator = _evaluator(model, step=step, data=data, lr=1e-4, example=example)
        pruner = cls(model, config, evaluator, training_steps=8)
    else:
        pruner = cls(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    keep: dict[str, list[int]] = {}
    for name in layers:
        weight = modules[name].weight.detach()
        total = weight.shape[0]
        mask = masks.get(name, {}).get("weight")
        alive = (mask.reshape(total, -1).sum(1) != 0) if mask is not None else torch.ones(total, dtype=torch.bool)
        count = max(1, int(alive.sum()))
        count = min(total, math.ceil(count / round_to) * round_to)
        # Rank alive channels first, then by L1 norm, so rounding revives the strongest pruned ones.
        norms = weight.reshape(total, -1).abs().sum(1)
        order = sorted(range(total), key=lambda i: (not bool(alive[i]), -float(norms[i])))
        keep[name] = sorted(order[:count])
    return keep


def weight_scales(
    model: nn.Module,
    bits: Mapping[str, int],
    *,
    method: str,
    steps: int,
    step: TrainStep,
    data: Batches,
    lr: float,
    example: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Train ``model`` with the NNI quantizer ``method`` and return per-output-channel weight scales.

    Only layers at 8 bits or fewer are quantized; the scales are symmetric (zero point 0), on the
    grid ``[-(2**(b-1) - 1), 2**(b-1) - 1]``. The model's float weights are updated in place.
    """
    layers = {name: b for name, b in bits.items() if b <= 8}
    if not layers:
        return {}
    config = [
        {
            "op_names": [name],
            "target_names": ["weight"],
            "quant_dtype": f"int{b}",
            "quant_scheme": "symmetric",
            "granularity": "out_channel",
        }
        for name, b in layers.items()
    ]
    evaluator = _evaluator(model, step=step, data=data, lr=lr, example=example)
    cls = _nni_quantizers()[method]
    quantizer = cls(model, config, evaluator)
    _, calibration = quantizer.compress(max(1, steps), None)
    quantizer.unwrap_model()
    scales = {}
    for name in layers:
        scale = calibration[name]["weight"]["scale"]
        scales[name] = scale.detach().reshape(-1).float().clone()
    return scales
