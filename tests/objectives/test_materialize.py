"""The materializer: channels really removed (and rounded), BN folded, low-bit layers on int8 kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeeze.objectives import CompressSpec
from squeeze.objectives._compress import channel_keep
from squeeze.objectives._materialize import activation_order, calibrate, fold_batchnorm, out_channels, remove_channels, to_int8
from squeeze.spaces import get_family

OPTIONS = {"widths": [8, 16], "depths": [1, 2]}
CONVS = ["stages.0.0.conv", "stages.1.0.conv", "stages.1.1.conv"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = get_family("cnn").build(OPTIONS, in_channels=1, num_classes=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_removed_channels_are_gone_and_the_function_is_kept() -> None:
    """Removing channel c equals cutting c's outgoing weights in the next layer."""
    model, x = _model(), torch.randn(4, 1, 8, 8)
    drop = [1, 4, 5]
    reference = _model()
    with torch.no_grad():
        reference.stages[1][0].conv.weight[:, drop] = 0
        want = reference(x)
    keep = {"stages.0.0.conv": [c for c in range(8) if c not in drop]}
    remove_channels(model, keep, example=x[:1])
    assert model.stages[0][0].conv.weight.shape[0] == 5
    assert model.stages[0][0].bn.num_features == 5
    assert model.stages[1][0].conv.weight.shape[1] == 5
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)


def test_removal_works_inside_no_grad() -> None:
    model = _model()
    with torch.no_grad():
        remove_channels(model, {"stages.1.1.conv": [0, 1, 2]}, example=torch.zeros(1, 1, 8, 8))
    assert out_channels(model, ["stages.1.1.conv"]) == {"stages.1.1.conv": 3}
    assert model.classifier.in_features == 3


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_round_channels_rounds_the_kept_counts(round_to: int) -> None:
    spec = CompressSpec(pruner="l1", round_channels=round_to)
    model = _model()
    sparsity = {"stages.0.0.conv": 0.375, "stages.1.0.conv": 0.3, "stages.1.1.conv": 0.7}
    keep = channel_keep(model, sparsity, method=spec.pruner, round_to=spec.round_channels,
                        example=torch.zeros(1, 1, 8, 8))
    remove_channels(model, keep, example=torch.zeros(1, 1, 8, 8))
    counts = out_channels(model, CONVS)
    unrounded = {"stages.0.0.conv": 5, "stages.1.0.conv": 12, "stages.1.1.conv": 5}  # what the pruner keeps
    widths = {"stages.0.0.conv": 8, "stages.1.0.conv": 16, "stages.1.1.conv": 16}
    for name, count in counts.items():
        want = min(widths[name], -(-unrounded[name] // round_to) * round_to)
        assert count == want, (name, count, want)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_fold_batchnorm_keeps_the_function() -> None:
    model, x = _model(), torch.randn(4, 1, 8, 8)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def _int8(bits: dict[str, int]):
    folded, x = fold_batchnorm(_model()), torch.randn(32, 1, 8, 8)
    modules = dict(folded.named_modules())
    scales = {}
    for n, b in bits.items():
        if b <= 8:
            w = modules[n].weight.detach()
            scales[n] = w.reshape(len(w), -1).abs().amax(1) / (2 ** (b - 1) - 1)
    acts = calibrate(folded, bits, scales, example=x[:1], calibration=x)
    return folded, scales, acts, x


def test_low_bit_layers_run_on_int8_kernels_without_round_trips_between_them() -> None:
    bits = {**{n: 8 for n in CONVS}, "classifier": 32}
    folded, scales, acts, x = _int8(bits)
    q = to_int8(folded, bits, scales, acts, example=x[:1])
    kinds = {name: type(m).__module__ for name, m in q.named_modules()}
    for conv in CONVS:
        assert kinds[conv].startswith("torch.ao.nn.intrinsic.quantized"), kinds[conv]  # conv+relu fused, int8
    assert isinstance(q.classifier, nn.Linear) and type(q.classifier).__module__.startswith("torch.nn")
    # One quantize at the input and one dequantize before the float classifier: activations stay int8
    # from the first convolution to the last.
    quantize = [n for n in q.graph.nodes if n.target is torch.quantize_per_tensor]
    dequantize = [n for n in q.graph.nodes if n.target == "dequantize"]
    assert len(quantize) == 1 and len(dequantize) == 1
    with torch.no_grad():
        assert torch.allclose(q(x), folded(x), atol=0.3)


def test_activations_given_in_graph_order_match_the_mapping() -> None:
    bits = {n: 8 for n in [*CONVS, "classifier"]}
    folded, scales, acts, x = _int8(bits)
    by_name = to_int8(folded, bits, scales, acts, example=x[:1])
    by_order = to_int8(folded, bits, scales, activation_order(acts), example=x[:1])
    with torch.no_grad():
        assert torch.equal(by_name(x), by_order(x))
    with pytest.raises(ValueError, match="activation observers"):
        to_int8(folded, bits, scales, activation_order(acts)[:-1], example=x[:1])


def test_building_int8_models_keeps_no_model_alive() -> None:
    """torch.ao's FX passes cache every module they see; a worker must not keep a copy per trial."""
    import gc
    import weakref

    bits = {n: 8 for n in [*CONVS, "classifier"]}
    folded, scales, acts, x = _int8(bits)
    q = to_int8(folded, bits, scales, acts, example=x[:1])
    weights = [m.weight for m in folded.modules() if isinstance(m, nn.Conv2d)]
    gone = [weakref.ref(folded), weakref.ref(q), *(weakref.ref(w) for w in weights)]
    del folded, q, weights
    gc.collect()
    assert [ref() for ref in gone] == [None] * len(gone)
