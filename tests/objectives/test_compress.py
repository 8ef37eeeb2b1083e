"""Every registered pruner and quantizer, run for real through NNI.

Pruners are checked on which channels they keep: one small layer's filters are set so that each
criterion drops a different one. Quantizers are checked on the scales they give at each bit-width,
on what they do to the weights, and on the artifact those scales make.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from squeeze.objectives import PRUNERS, QUANTIZERS, Arch, CompressSpec, decode, encode
from squeeze.objectives._compress import channel_keep, weight_scales
from squeeze.objectives._materialize import calibrate, fold_batchnorm, out_channels
from squeeze.spaces import CompressionPlan, get_family

# --- pruners ---------------------------------------------------------------------------------------

# Six 1x1 filters over four input channels, named for their role. Norms (L1, L2) and FPGM's
# summed distance to the other filters:
#   A (7, 7, 40.3)  B (6.5, 6.5, 38.6)  C (6.2, 6.2, 37.4)  M (6, 3.5, 26.1)  X (4, 2, 33.1)  Y (3, 3, 30.7)
# so L1 ranks Y lowest, L2 ranks X lowest (it squares, so X's four small weights count less than
# Y's one large one), and FPGM ranks M lowest (it sits in the middle of A, B and C). The loss
# below has no gradient through A, the largest filter, so Taylor's importance ranks A lowest.
FILTERS = {
    "A": [7.0, 0.0, 0.0, 0.0],
    "B": [0.0, 6.5, 0.0, 0.0],
    "C": [0.0, 0.0, 6.2, 0.0],
    "M": [2.0, 2.0, 2.0, 0.0],
    "X": [-1.0, -1.0, -1.0, -1.0],
    "Y": [0.0, 0.0, 0.0, 3.0],
}
NAMES = list(FILTERS)
LOSS_WEIGHTS = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # one per filter: A's output does not count

DROPPED_ONE = {"l1": {"Y"}, "l2": {"X"}, "fpgm": {"M"}, "taylor": {"A"}}
"""What each criterion drops at sparsity 0.2 (one filter of six)."""

DROPPED_TWO = {"l1": {"X", "Y"}, "l2": {"X", "Y"}, "fpgm": {"M", "Y"}, "taylor": {"A", "X"}}
"""At sparsity 0.5 with channels rounded to 2: three dropped, rounded up to four kept, so the two
the criterion ranks lowest are dropped (Taylor: A, then X's (w * g)**2 = 4 below Y's 9)."""


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, len(FILTERS), 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(list(FILTERS.values()))[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _linear_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Linear in each filter's output, so every filter's gradient is its loss weight times the input.
    return (model(x).mean((0, 2, 3)) * LOSS_WEIGHTS).sum()


def _ones() -> itertools.repeat:
    return itertools.repeat((torch.ones(2, 4, 3, 3), torch.zeros(2, dtype=torch.long)))


def _dropped(method: str, sparsity: float, round_to: int) -> set[str]:
    keep = channel_keep(OneLayer(), {"conv": sparsity}, method=method, round_to=round_to, step=_linear_loss,
                        data=_ones, example=torch.ones(1, 4, 3, 3))
    return {NAMES[i] for i in range(len(NAMES)) if i not in keep["conv"]}


def test_the_pruner_registry_is_the_documented_one() -> None:
    """Removing a method from the registry fails here; adding one fails the tests below until it is covered."""
    assert PRUNERS == ("l1", "l2", "fpgm", "taylor")
    for method in PRUNERS:
        assert CompressSpec(pruner=method).pruner == method


@pytest.mark.parametrize("method", PRUNERS)
def test_each_pruner_drops_the_filter_its_criterion_ranks_lowest(method: str) -> None:
    assert _dropped(method, 0.2, 1) == DROPPED_ONE[method]


@pytest.mark.parametrize("method", PRUNERS)
def test_rounding_keeps_the_criterions_next_best_channels(method: str) -> None:
    assert _dropped(method, 0.5, 2) == DROPPED_TWO[method]


@pytest.mark.parametrize("method", PRUNERS)
def test_choosing_channels_leaves_the_model_as_it_was(method: str) -> None:
    """Taylor trains a few batches to collect gradients; the weights and batch-norm statistics stay put."""
    torch.manual_seed(0)
    model = get_family("cnn").build({"widths": [4, 8], "depths": [1, 1]}, in_channels=1, num_classes=3).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = channel_keep(
        model, {"stages.0.0.conv": 0.5, "stages.1.0.conv": 0.5}, method=method,
        step=lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb), data=lambda: itertools.repeat((x, y)),
        example=x[:1],
    )
    assert {name: len(kept) for name, kept in keep.items()} == {"stages.0.0.conv": 2, "stages.1.0.conv": 4}
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not model.training


# --- quantizers ------------------------------------------------------------------------------------

OPTIONS = {"widths": [4, 8], "depths": [1, 1]}
LAYERS = ["stages.0.0.conv", "stages.1.0.conv", "classifier"]
STEPS = 3


def _folded() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = get_family("cnn").build(OPTIONS, in_channels=1, num_classes=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), fold_batchnorm(model)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _scales(folded: nn.Module, bits: dict[str, int], method: str) -> dict[str, torch.Tensor]:
    x, y = _data()
    # A learning rate small enough that the scales show where each method starts them.
    return weight_scales(folded, bits, method=method, steps=STEPS,
                         step=lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb),
                         data=lambda: itertools.repeat((x, y)), lr=1e-5, example=x[:1])


def _max_abs(folded: nn.Module, name: str) -> torch.Tensor:
    w = dict(folded.named_modules())[name].weight.detach()
    return w.reshape(len(w), -1).abs().amax(1)


def test_the_quantizer_registry_is_the_documented_one() -> None:
    assert QUANTIZERS == ("qat", "ptq", "lsq")
    for method in QUANTIZERS:
        assert CompressSpec(quantizer=method).quantizer == method


@pytest.mark.parametrize("method", QUANTIZERS)
def test_each_quantizer_gives_per_channel_scales_for_the_requested_bit_width(method: str) -> None:
    """Fewer bits, a coarser grid: each step down in bits at least doubles every channel's scale."""
    by_bits = {}
    for b in (2, 4, 8):
        _, folded = _folded()
        scales = _scales(folded, {name: b for name in LAYERS}, method)
        assert scales.keys() == set(LAYERS)
        for name, s in scales.items():
            assert s.shape == _max_abs(folded, name).shape  # one scale per output channel
            assert torch.isfinite(s).all() and (s > 0).all()
            # The grid reaches at least half of each channel's largest weight (LSQ clips some by design).
            assert (_max_abs(folded, name) / s <= 2 * (2 ** (b - 1) - 1)).all(), (name, b)
        by_bits[b] = scales
    for low, high in ((2, 4), (4, 8)):
        for name in LAYERS:
            assert (by_bits[low][name] >= 2 * by_bits[high][name]).all(), (method, name, low, high)


@pytest.mark.parametrize("method", QUANTIZERS)
def test_only_the_training_quantizers_take_optimizer_steps(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ptq`` is post-training: no optimizer step, the model exactly as it was, min-max scales."""
    steps = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    _, folded = _folded()
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    scales = _scales(folded, {name: 4 for name in LAYERS}, method)
    unchanged = all(torch.equal(folded.state_dict()[k], v) for k, v in before.items())
    if method == "ptq":
        assert len(steps) == 0 and unchanged
        for name in LAYERS:
            assert torch.allclose(scales[name], _max_abs(folded, name) / 7)
    else:
        assert len(steps) == STEPS and not unchanged


@pytest.mark.parametrize("method", QUANTIZERS)
def test_each_quantizers_scales_make_an_artifact_on_their_grid(method: str) -> None:
    """The artifact keeps each layer's scales and its integers within the layer's bit-width."""
    model, folded = _folded()
    bits = {"stages.0.0.conv": 2, "stages.1.0.conv": 4, "classifier": 8}
    scales = _scales(folded, bits, method)
    x, _ = _data()
    acts = calibrate(folded, bits, scales, example=x[:1], calibration=x)
    family = get_family("cnn")
    arch = Arch(family="cnn", options=OPTIONS, student={}, in_channels=1, num_classes=3, input_size=(8, 8),
                channels=out_channels(model, family.prunable(model)))
    loaded = decode(encode(folded, arch=arch, plan=CompressionPlan(bits=bits), scales=scales, activations=acts))
    modules = dict(loaded.module.named_modules())
    for name, b in bits.items():
        weight = modules[name].weight()
        assert weight.is_quantized, name
        assert torch.allclose(weight.q_per_channel_scales().float(), scales[name]), name
        assert weight.int_repr().abs().max() <= 2 ** (b - 1) - 1, name
    with torch.no_grad():
        assert torch.isfinite(loaded.module(x)).all()
