"""The artifact file: bit packing, bit-exact round trips (also in a fresh process), size against its floor."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from squeeze.objectives import Arch, decode, encode, load_artifact, size_floor
from squeeze.objectives._artifact import pack_bits, unpack_bits
from squeeze.objectives._compress import channel_keep
from squeeze.objectives._materialize import calibrate, fold_batchnorm, out_channels, remove_channels, to_int8
from squeeze.spaces import CompressionPlan, SqueezeError, get_family

OPTIONS = {"widths": [6, 12], "depths": [1, 2]}
CARD = {"accuracy": 0.875, "latency_ratio": 0.4, "cpu": "test cpu", "threads": 1, "batch": 1}
LAYERS = ["stages.0.0.conv", "stages.1.0.conv", "stages.1.1.conv", "classifier"]


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 9, 257):
        values = rng.integers(0, 2**bits, size=count).astype(np.uint8)
        values[0] = 2**bits - 1  # the extremes of the range survive
        packed = pack_bits(values, bits)
        assert len(packed) == -(-count * bits // 8)  # ceil: two 4-bit or four 2-bit values a byte
        assert np.array_equal(unpack_bits(packed, bits, count), values)


def _model(plan: CompressionPlan, *, keep: dict[str, list[int]] | None = None, pruner: str | None = None):
    """A tiny trained-looking cnn, pruned, folded and calibrated as the trial pipeline does it."""
    torch.manual_seed(0)
    family = get_family("cnn")
    model = family.build(OPTIONS, in_channels=1, num_classes=5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(64, 1, 8, 8)
    if pruner:
        keep = channel_keep(model, dict(plan.sparsity), method=pruner, example=x[:1])
    if keep:
        remove_channels(model, keep, example=x[:1])
    folded = fold_batchnorm(model)
    modules = dict(folded.named_modules())
    scales = {}
    for name, b in plan.bits.items():
        if b <= 8:
            w = modules[name].weight.detach()
            scales[name] = w.reshape(len(w), -1).abs().amax(1) / (2 ** (b - 1) - 1) * 0.9  # some weights clamp
    acts = calibrate(folded, dict(plan.bits), scales, example=x[:1], calibration=x)
    arch = Arch(family="cnn", options=OPTIONS, student={}, in_channels=1, num_classes=5, input_size=(8, 8),
                channels=out_channels(model, family.prunable(model)))
    return folded, arch, scales, acts, x


PLANS = {
    "int8": CompressionPlan(bits={n: 8 for n in LAYERS}),
    "mixed": CompressionPlan(bits={"stages.0.0.conv": 2, "stages.1.0.conv": 4, "stages.1.1.conv": 8, "classifier": 32},
                             sparsity={"stages.1.0.conv": 0.5}),
    "half": CompressionPlan(bits={n: 16 for n in LAYERS}),
    "float": CompressionPlan(),
}
KEEP = {"mixed": {"stages.1.0.conv": [0, 2, 3, 5, 7, 11]}}


@pytest.fixture(scope="module")
def built() -> dict[str, tuple]:
    out = {}
    for key, plan in PLANS.items():
        folded, arch, scales, acts, x = _model(plan, keep=KEEP.get(key))
        blob = encode(folded, arch=arch, plan=plan, scales=scales, activations=acts, card=CARD)
        out[key] = (folded, arch, scales, acts, x, blob)
    return out


@pytest.mark.parametrize("key", ["int8", "mixed"])
def test_int8_path_is_bit_exact_with_the_converted_model(built, key: str) -> None:
    """What the file holds is exactly what converting the model on its weight grid runs."""
    folded, arch, scales, acts, x, blob = built[key]
    plan = PLANS[key]
    gridded = fold_batchnorm(folded)
    modules = dict(gridded.named_modules())
    with torch.no_grad():
        for name, s in scales.items():
            qmax = 2 ** (plan.bits[name] - 1) - 1
            w = modules[name].weight
            shape = (-1, *[1] * (w.dim() - 1))
            w.copy_(torch.clamp(torch.round(w / s.reshape(shape)), -qmax, qmax) * s.reshape(shape))
    direct = to_int8(gridded, dict(plan.bits), scales, acts, example=x[:1])
    loaded = decode(blob)
    assert any(".quantized." in type(m).__module__ for m in loaded.module.modules())
    with torch.no_grad():
        assert torch.equal(loaded.module(x), direct(x))


@pytest.mark.parametrize("key", ["half", "float"])
def test_float_path_round_trips(built, key: str) -> None:
    folded, _, _, _, x, blob = built[key]
    loaded = decode(blob)
    tol = 1e-5 if key == "float" else 2e-2  # half precision keeps about three digits
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), folded(x), atol=tol, rtol=tol)
    assert loaded.plan == PLANS[key]


@pytest.mark.parametrize("bits", [32, 16])
def test_layers_pruned_by_the_nni_pruner_round_trip(bits: int) -> None:
    """NNI's pruner re-registers a layer's weight after its bias; the file must not follow that order."""
    layers = ["stages.1.0.conv", "stages.1.1.conv"]
    plan = CompressionPlan(bits={n: bits for n in LAYERS}, sparsity={n: 0.5 for n in layers})
    folded, arch, scales, acts, x = _model(plan, pruner="l1")
    loaded = decode(encode(folded, arch=arch, plan=plan, scales=scales, activations=acts))
    tol = 1e-5 if bits == 32 else 2e-2
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), folded(x), atol=tol, rtol=tol)


def test_fresh_process_gives_the_same_outputs(built, tmp_path: Path) -> None:
    """Export, then load in a new interpreter: bit-exact on the int8 path, within 1e-5 in float."""
    expected = {}
    for key, (_, _, _, _, x, blob) in built.items():
        (tmp_path / f"{key}.squeeze").write_bytes(blob)
        with torch.no_grad():
            expected[key] = decode(blob).module(x).numpy()
    np.save(tmp_path / "x.npy", built["int8"][4].numpy())
    code = (
        "import sys, numpy as np, torch\n"
        "from pathlib import Path\n"
        "from squeeze.objectives import load_artifact\n"
        "d = Path(sys.argv[1]); x = torch.from_numpy(np.load(d / 'x.npy'))\n"
        "for f in sorted(d.glob('*.squeeze')):\n"
        "    with torch.inference_mode():  # loading works inside a caller's inference mode too\n"
        "        np.save(d / (f.stem + '.out.npy'), load_artifact(f).module(x).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    for key, want in expected.items():
        got = np.load(tmp_path / f"{key}.out.npy")
        if key in ("int8", "mixed"):
            assert np.array_equal(got, want), key
        else:
            assert np.allclose(got, want, atol=1e-5, rtol=0), key


def test_size_is_the_file_and_near_its_floor(built, tmp_path: Path) -> None:
    for key, (folded, arch, scales, acts, _, blob) in built.items():
        path = tmp_path / f"{key}.squeeze"
        path.write_bytes(blob)
        loaded = load_artifact(path)
        assert loaded.size_bytes == path.stat().st_size == len(blob) == loaded.card["bytes"]
        assert loaded.floor_bytes == size_floor(arch=arch, plan=PLANS[key], card=loaded.card, activations=len(acts))
        assert loaded.size_bytes <= 1.05 * loaded.floor_bytes, (key, loaded.size_bytes, loaded.floor_bytes)


def test_floor_counts_what_it_says() -> None:
    """The floor, by hand, for the mixed plan: weights at their width, float biases, scales, qparams, JSON."""
    plan = PLANS["mixed"]
    folded, arch, scales, acts, _ = _model(plan, keep=KEEP["mixed"])
    card = {**CARD, "bytes": 1234}
    want = 0.0
    for name, t in folded.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        b = plan.bits.get(owner, 32)
        want += t.numel() * (b / 8 if leaf == "weight" else 4)
    want += 4 * sum(len(s) for s in scales.values()) + 5 * len(acts)
    want += sum(len(json.dumps(d, sort_keys=True, separators=(",", ":"))) for d in (arch.to_dict(), plan.to_dict(), card))
    assert size_floor(arch=arch, plan=plan, card=card, activations=len(acts)) == pytest.approx(want)
    assert arch.channels["stages.1.0.conv"] == 6  # kept weights only


def test_damaged_files_say_so_in_one_sentence(built, tmp_path: Path) -> None:
    blob = built["mixed"][5]
    cases = {
        "truncated": (blob[:-100], "is damaged: its checksum does not match"),
        "altered": (blob[:200] + bytes([blob[200] ^ 1]) + blob[201:], "is damaged: its checksum does not match"),
        "foreign": (b"\x89PNG\r\n\x1a\n" + blob[8:], "is not a squeeze artifact"),
        "empty": (b"", "is not a squeeze artifact"),
    }
    body = blob[:-8].replace(b'"classifier":32', b'"classifier":99', 1)  # re-checksummed: parses, but is wrong
    cases["forged"] = (body + hashlib.sha256(body).digest()[:8], "not a valid squeeze artifact: its checksum holds")
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.squeeze"
        path.write_bytes(data)
        with pytest.raises(SqueezeError, match=message) as info:
            load_artifact(path)
        assert "\n" not in str(info.value) and str(info.value).endswith(".")
    with pytest.raises(SqueezeError, match="cannot read artifact"):
        load_artifact(tmp_path / "missing.squeeze")


def test_encode_refuses_a_low_bit_layer_without_scales(built) -> None:
    folded, arch, scales, acts, _, _ = built["int8"]
    partial = {k: v for k, v in scales.items() if k != "classifier"}
    with pytest.raises(ValueError, match="classifier is planned at 8 bits but has no weight scales"):
        encode(folded, arch=arch, plan=PLANS["int8"], scales=partial, activations=acts)
