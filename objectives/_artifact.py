"""One artifact file per compressed model: packed weights, plan, architecture, and a card.

The file is safetensors (no pickle): four flat tensors hold every number, so the byte count
stays close to its floor (kept weights x bits / 8, plus scales, plus the metadata):

- ``packed``: uint8, the integer weights of every layer at 8 bits or fewer, bit-packed at the
  layer's width (two 4-bit or four 2-bit values a byte);
- ``scales``: float32, per-output-channel weight scales of those layers;
- ``floats``: float32, biases and the weights of layers left in float, and activation qparams;
- ``halves``: float16, the weights of 16-bit layers.

The metadata holds ``arch`` (what rebuilds the module), ``layout`` (where each tensor lies),
``plan`` and ``card`` (measured figures), each as compact JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from squeeze.spaces import CompressionPlan, SqueezeError, get_family

from ._materialize import fold_batchnorm, remove_channels, to_int8

FORMAT = "squeeze-artifact/1"


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers below ``2**bits`` into bytes, little-endian bit order."""
    flat = values.astype(np.uint8).reshape(-1, 1)
    planes = np.unpackbits(flat, axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for ``count`` values."""
    planes = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, :bits] = planes
    return np.packbits(full, axis=1, bitorder="little").reshape(-1)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Arch:
    """What rebuilds the materialized architecture: family, options, student, kept channels."""

    family: str
    options: Mapping[str, Any]
    student: Mapping[str, Any]
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    channels: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "options": dict(self.options),
            "student": {k: dict(v) for k, v in self.student.items()},
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "channels": dict(self.channels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        return cls(
            family=d["family"],
            options=d["options"],
            student=d["student"],
            in_channels=int(d["in_channels"]),
            num_classes=int(d["num_classes"]),
            input_size=tuple(d["input_size"]),
            channels=d["channels"],
        )

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, *self.input_size)

    def rebuild_float(self) -> fx.GraphModule:
        """The folded float module with the right shapes (its values are overwritten on load)."""
        family = get_family(self.family)
        model = family.build(
            self.options, in_channels=self.in_channels, num_classes=self.num_classes, student=self.student or None
        )
        counts = {n: c for n, c in self.channels.items()}
        modules = dict(model.named_modules())
        keep = {n: list(range(c)) for n, c in counts.items() if modules[n].weight.shape[0] != c}
        remove_channels(model, keep, example=self.example())
        return fold_batchnorm(model)


def encode(
    folded: fx.GraphModule,
    *,
    arch: Arch,
    plan: CompressionPlan,
    scales: Mapping[str, torch.Tensor],
    activations: Mapping[str, tuple[float, int]],
    card: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialize a folded model, quantizing low-bit layers with ``scales``, to artifact bytes."""
    from safetensors.torch import save

    bits = dict(plan.bits)
    modules = dict(folded.named_modules())
    packed: list[np.ndarray] = []
    scale_parts: list[torch.Tensor] = []
    floats: list[torch.Tensor] = []
    halves: list[torch.Tensor] = []
    offsets = {"packed": 0, "scales": 0, "floats": 0, "halves": 0}
    layout: list[list[Any]] = []

    def put(kind: str, parts: list, tensor: Any, size: int) -> int:
        start = offsets[kind]
        parts.append(tensor)
        offsets[kind] += size
        return start

    for pname, param in folded.state_dict().items():
        owner, _, leaf = pname.rpartition(".")
        b = bits.get(owner, 32)
        t = param.detach().float()
        if leaf == "weight" and owner in scales and b <= 8 and isinstance(modules.get(owner), (nn.Conv2d, nn.Linear)):
            s = scales[owner].float()
            qmax = 2 ** (b - 1) - 1
            q = torch.clamp(torch.round(t / s.reshape(-1, *[1] * (t.dim() - 1))), -qmax, qmax).to(torch.int16)
            data = pack_bits((q + qmax).numpy().astype(np.uint8), b)
            p0 = put("packed", packed, data, len(data))
            s0 = put("scales", scale_parts, s, len(s))
            layout.append([pname, "q", list(t.shape), b, p0, s0])
        elif b == 16:
            h0 = put("halves", halves, t.half().reshape(-1), t.numel())
            layout.append([pname, "h", list(t.shape), h0])
        else:
            f0 = put("floats", floats, t.reshape(-1), t.numel())
            layout.append([pname, "f", list(t.shape), f0])
    act_names = sorted(activations, key=lambda n: (len(n), n))
    a0 = put("floats", floats, torch.tensor([v for n in act_names for v in activations[n]], dtype=torch.float32), 2 * len(act_names))
    tensors: dict[str, torch.Tensor] = {}
    if packed:
        tensors["packed"] = torch.from_numpy(np.concatenate(packed))
    if scale_parts:
        tensors["scales"] = torch.cat(scale_parts)
    if floats:
        tensors["floats"] = torch.cat([f.reshape(-1) for f in floats])
    if halves:
        tensors["halves"] = torch.cat(halves)
    meta = {
        "format": FORMAT,
        "arch": _dumps(arch.to_dict()),
        "layout": _dumps({"params": layout, "acts": [act_names, a0]}),
        "plan": plan.to_json(),
    }
    body = {k: v.contiguous() for k, v in tensors.items()}
    if card is None:
        return save(body, metadata=meta)
    # The card records the file's own byte count, so settle it by fixed point (two passes at most).
    size = 0
    for _ in range(4):
        blob = save(body, metadata={**meta, "card": _dumps({**card, "bytes": size})})
        if len(blob) == size:
            return blob
        size = len(blob)
    return blob


@dataclass(frozen=True)
class Loaded:
    """A loaded artifact: the runnable module and what the file says about it."""

    module: nn.Module
    arch: Arch
    plan: CompressionPlan
    card: dict[str, Any]
    sha256: str
    size_bytes: int


def decode(blob: bytes, *, source: str = "artifact") -> Loaded:
    """Rebuild the runnable module from artifact bytes; a damaged file gives a SqueezeError."""
    from safetensors.torch import load

    try:
        tensors = load(blob)
        meta = _read_metadata(blob)
        if meta.get("format") != FORMAT:
            raise ValueError("format")
        arch = Arch.from_dict(json.loads(meta["arch"]))
        layout = json.loads(meta["layout"])
        plan = CompressionPlan.from_json(meta["plan"])
        card = json.loads(meta.get("card", "{}"))
        folded = arch.rebuild_float()
        state = {}
        scales: dict[str, torch.Tensor] = {}
        bits = dict(plan.bits)
        for entry in layout["params"]:
            name, kind, shape = entry[0], entry[1], entry[2]
            count = math.prod(shape)
            if kind == "q":
                b, p0, s0 = entry[3], entry[4], entry[5]
                nbytes = math.ceil(count * b / 8)
                raw = tensors["packed"][p0 : p0 + nbytes].numpy()
                if len(raw) != nbytes:
                    raise ValueError("short packed data")
                qmax = 2 ** (b - 1) - 1
                q = torch.from_numpy(unpack_bits(raw, b, count).astype(np.int16) - qmax).reshape(shape)
                s = tensors["scales"][s0 : s0 + shape[0]].clone()
                scales[name.rpartition(".")[0]] = s
                state[name] = q.float() * s.reshape(-1, *[1] * (len(shape) - 1))
            elif kind == "h":
                state[name] = tensors["halves"][entry[3] : entry[3] + count].float().reshape(shape)
            else:
                state[name] = tensors["floats"][entry[3] : entry[3] + count].clone().reshape(shape)
        folded.load_state_dict(state, strict=True)
        act_names, a0 = layout["acts"]
        values = tensors["floats"][a0 : a0 + 2 * len(act_names)].tolist() if act_names else []
        activations = {n: (values[2 * i], int(values[2 * i + 1])) for i, n in enumerate(act_names)}
        module = to_int8(folded, bits, scales, activations, example=arch.example())
    except SqueezeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage to the file means the same thing to the user
        raise SqueezeError(
            f"`{source}` is not a valid squeeze artifact (it is truncated, altered or of another format: {type(exc).__name__})."
        ) from None
    return Loaded(
        module=module, arch=arch, plan=plan, card=card, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob)
    )


def _read_metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    return header.get("__metadata__", {})


def load_artifact(path: str | Path) -> Loaded:
    """Load an artifact file into a runnable module (no unpickling)."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise SqueezeError(f"cannot read artifact `{p}`: {exc.strerror}.") from None
    return decode(blob, source=str(p))
