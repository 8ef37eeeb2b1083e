"""NNI behind a small interface: channel masks from a pruner, weight scales from a quantizer.

Only this module imports NNI, so the rest of the project does not change if it is replaced.
Pruners and quantizers are registered by name; the CLI lists them.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from squeeze.spaces import SqueezeError, one_line, runs_int8

TrainStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(model, x, y) -> loss``: one training loss, used by pruners and quantizers that train."""

Batches = Callable[[], "Any"]
"""Returns an iterator of ``(x, y)`` training batches."""

def _quiet_nni() -> None:
    # NNI logs every pruner and quantizer step at INFO; quieted when first used, not when squeeze is imported.
    logging.getLogger("nni").setLevel(logging.ERROR)


def _nni_pruners() -> dict[str, Any]:
    from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, TaylorPruner

    _quiet_nni()
    return {"l1": L1NormPruner, "l2": L2NormPruner, "fpgm": FPGMPruner, "taylor": TaylorPruner}


def _nni_quantizers() -> dict[str, Any]:
    from nni.compression.quantization import LsqQuantizer, PtqQuantizer, QATQuantizer

    _quiet_nni()
    return {"qat": QATQuantizer, "ptq": PtqQuantizer, "lsq": LsqQuantizer}


PRUNERS = ("l1", "l2", "fpgm", "taylor")
"""Registered pruner names (structured: whole output channels, so they can be removed).

``l1`` and ``l2`` drop the filters of smallest L1 or L2 norm; ``fpgm`` drops the filters nearest
the layer's geometric median (the most replaceable ones); ``taylor`` drops the filters whose
first-order Taylor importance, the summed ``(weight * gradient)**2`` over a few training batches,
is smallest.
"""

QUANTIZERS = ("qat", "ptq", "lsq")
"""Registered quantizer names.

``qat`` trains with fake quantization, its scales following the weights' range; ``lsq`` trains
the scales themselves (learned step size); ``ptq`` is post-training: it only reads the weights,
takes no optimizer step and leaves them as they are.
"""

TAYLOR_STEPS = 8
"""Training batches over which the taylor pruner sums its importance."""


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


def _evaluator(
    model: nn.Module, *, step: TrainStep | None, data: Batches, lr: float, example: torch.Tensor
) -> Any:
    """An NNI ``TorchEvaluator`` over ``data``; with ``step=None`` its "training" only runs forward passes."""
    import nni
    from nni.compression import TorchEvaluator

    def training_step(batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> torch.Tensor:
        assert step is not None
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

    def calibration_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        # Post-training: the quantizer observes the model on a few batches, nothing is trained.
        evaluating_func(model)

    def evaluating_func(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            stream = data()
            for _ in range(4):
                xb, _ = next(stream)
                model(xb)
        return 0.0

    optimizer = nni.trace(torch.optim.Adam)(model.parameters(), lr=lr)
    loop = training_func if step is not None else calibration_func
    return TorchEvaluator(loop, optimizer, training_step, dummy_input=example, evaluating_func=evaluating_func)


def kept_count(total: int, ratio: float, *, round_to: int = 1) -> int:
    """How many of ``total`` channels a layer keeps at sparsity ``ratio``.

    NNI removes ``int(total * ratio)`` channels; the layer keeps at least one, and the count is
    rounded up to a multiple of ``round_to`` (never above ``total``).
    """
    count = max(1, total - int(total * ratio))
    return min(total, math.ceil(count / round_to) * round_to)


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

    A layer keeps :func:`kept_count` channels: the pruner is asked for exactly that many, so that
    rounding keeps the criterion's next-best channels, not another criterion's. ``model`` is left
    as it was: the taylor pruner's training batches only collect gradients.
    """
    layers = {name: ratio for name, ratio in sparsity.items() if ratio > 0}
    if not layers:
        return {}
    modules = dict(model.named_modules())
    totals = {name: int(modules[name].weight.shape[0]) for name in layers}
    counts = {name: kept_count(totals[name], ratio, round_to=round_to) for name, ratio in layers.items()}
    pruned = [name for name in layers if counts[name] < totals[name]]
    keep = {name: list(range(totals[name])) for name in layers}
    if not pruned:
        return keep
    # NNI drops int(total * ratio) channels; half a channel of slack keeps float error off that floor.
    config = [
        {"op_names": [name], "sparse_ratio": (totals[name] - counts[name] + 0.5) / totals[name]} for name in pruned
    ]
    cls = _nni_pruners()[method]
    state, training = copy.deepcopy(model.state_dict()), model.training
    if method == "taylor":
        if step is None or data is None:
            raise ValueError("the taylor pruner needs a training step and data")
        # NNI collects the gradients when the optimizer steps; at lr 0 those steps change nothing.
        evaluator = _evaluator(model, step=step, data=data, lr=0.0, example=example)
        pruner = cls(model, config, evaluator, training_steps=TAYLOR_STEPS)
    else:
        pruner = cls(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    # Training-mode passes move batch-norm statistics; the caller prunes the model it handed over.
    model.load_state_dict(state)
    model.train(training)
    for name in pruned:
        mask = masks[name]["weight"].reshape(totals[name], -1)
        alive = [i for i in range(totals[name]) if bool(mask[i].any())]
        if len(alive) != counts[name]:
            raise RuntimeError(f"the {method} pruner kept {len(alive)} channels of {name}, not {counts[name]}")
        keep[name] = alive
    return keep


def _weight_config(bits: int) -> dict[str, Any]:
    """NNI's setting for a layer's weight at ``bits``: symmetric, one scale per output channel."""
    return {"target_names": ["weight"], "quant_dtype": f"int{bits}", "quant_scheme": "symmetric",
            "granularity": "out_channel"}


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
    """Per-output-channel weight scales of ``model`` from the NNI quantizer ``method``.

    Only layers at 8 bits or fewer are quantized; the scales are symmetric (zero point 0), on the
    grid ``[-(2**(b-1) - 1), 2**(b-1) - 1]``. ``qat`` and ``lsq`` train ``model`` for ``steps``
    batches and update its float weights in place; ``ptq`` only reads the weights (``steps``,
    ``step`` and ``lr`` are unused) and leaves ``model`` as it was.
    """
    layers = {name: b for name, b in bits.items() if runs_int8(b)}
    if not layers:
        return {}
    config = [{"op_names": [name], **_weight_config(b)} for name, b in layers.items()]
    post_training = method == "ptq"
    evaluator = _evaluator(model, step=None if post_training else step, data=data, lr=lr, example=example)
    cls = _nni_quantizers()[method]
    quantizer = cls(model, config, evaluator)
    if method == "lsq":
        _lsq_initial_scales(quantizer)
    _, calibration = quantizer.compress(1 if post_training else max(1, steps), None)
    quantizer.unwrap_model()
    scales = {}
    for name, b in layers.items():
        found = calibration[name]["weight"]
        if found.get("quant_bits") != b:
            raise RuntimeError(f"the {method} quantizer calibrated {name} at {found.get('quant_bits')} bits, not {b}")
        scales[name] = found["scale"].detach().reshape(-1).float().clone()
    return scales


def quantizer_refuses(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """The layers of ``names`` NNI's quantizers have no setting for (a module class it does not know), with its message.

    Read from NNI's registry of module classes, without quantizing anything: such a layer fails every
    quantizer at every bit-width.
    """
    from nni.compression.base.setting import canonicalize_settings

    refused = {}
    for name in names:
        try:
            canonicalize_settings(model.get_submodule(name), _weight_config(8), "quantization")
        except AssertionError as exc:  # NNI asserts that a module class is registered
            refused[name] = one_line(exc, limit=240)
    return refused


def _lsq_initial_scales(quantizer: Any) -> None:
    """Start LSQ's learned scales at its paper's ``2 * mean(|w|) / sqrt(qmax)`` per channel, at most ``max(|w|) / qmax``.

    NNI 3.0 starts every scale at 0.01 whatever the weights and the bit-width (the paper's rule is
    commented out there): on small layers that clamps most weights at 2 bits and uses a fifth of
    the grid at 8. The cap applies from about 4 bits up, where the paper's value is coarser than
    the min-max scale, which already reaches every weight. NNI writes its 0.01 on each forward pass
    until the first optimizer step; this hook runs after NNI's, and so overrides it, as long.
    """

    def initial(wrapper: Any, target_name: str, target: torch.Tensor) -> None:
        space = wrapper.quantization_target_spaces.get(target_name)
        if quantizer.is_init or space is None:
            return
        magnitude = target.detach().abs()
        mean_abs = space._scaler.shrink(magnitude, lambda t: t.mean(dim=-1), keepdim=True)
        max_abs = space._scaler.shrink(magnitude, lambda t: t.amax(dim=-1), keepdim=True)
        scale = torch.minimum(2 * mean_abs / math.sqrt(space.qmax), max_abs / space.qmax)
        floor = torch.finfo(torch.float32).eps  # a channel of zeros still gets a positive scale
        space.scale.data = torch.clamp(scale, min=floor)

    for wrapper in quantizer._module_wrappers.values():
        wrapper.register_track_func(initial)
