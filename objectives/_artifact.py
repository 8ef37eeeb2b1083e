"""One artifact file per compressed model: packed weights, plan, architecture, and a card.

The format is small and pickle-free, because the file's byte count *is* the size objective and
must stay within a few percent of its floor (:func:`size_floor`)::

    b"SQZ1"                        4 bytes, the signature
    header length                  4 bytes, unsigned little-endian
    header                         three JSON lines (UTF-8): arch, plan, card
    payload                        the numbers, in six regions (below)
    checksum                       8 bytes: the first 8 bytes of SHA-256 over everything before

Payload regions, little-endian, one after another:

- packed: the integer weights of every layer at 8 bits or fewer, each tensor bit-packed at its
  layer's width (two 4-bit or four 2-bit values a byte) and padded to a whole byte;
- weight scales: float32, one per output channel of those layers (zero points are 0: symmetric);
- floats: float32, biases and the weights of layers left in float;
- halves: float16, weights and biases of 16-bit layers;
- activation scales: float32, and activation zero points: uint8, one each per quantize point.

No offsets or names are stored: the architecture, rebuilt from ``arch``, lists the parameters in
a fixed order and the plan gives each its width, so the layout follows from the header. A safetensors
file was the first format; its JSON-in-JSON metadata and per-tensor headers cost up to 90% over
the floor on the smallest models the search finds.

A file is data from anywhere, and its checksum only catches accidents (anyone can recompute it).
So loading never imports or calls what the file names: a built-in family is looked up by name, a
user's factory is used only when the caller hands it over (``family=``, or its module in
``allow=``), and the architecture is checked and laid out without storage before anything is
allocated (``_rebuild``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from squeeze.spaces import CompressionPlan, SqueezeError, family_named, runs_int8

from ._materialize import activation_order, to_int8
from ._rebuild import Arch, FamilyArg, materialize, shape_of

FORMAT = "squeeze-artifact/1"
MAGIC = b"SQZ1"
CHECKSUM_BYTES = 8
_HEAD = struct.Struct("<4sI")
ACT_BYTES = 5
"""Bytes per activation quantize point: a float32 scale and a uint8 zero point."""
REGISTRATIONS_PER_BYTE = 2
"""Modules and parameters a file's architecture may register per payload byte (plus a floor).

Every layer left after folding stores at least a weight and a bias of a few bytes, and a block
of a few modules holds one such layer, so real files stay far below this."""
REGISTRATIONS_FLOOR = 1024


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


_LEAF_RANK = {"weight": 0, "bias": 1}


@dataclass(frozen=True)
class _Slot:
    """Where one parameter lives: packed at ``bits`` (``q``), float32 (``f``) or float16 (``h``)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    bits: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def _slots(folded: fx.GraphModule, plan: CompressionPlan) -> list[_Slot]:
    """Every parameter of ``folded`` in the artifact's order, with how the plan says to store it.

    The order is the modules' order, and within a module ``weight`` before ``bias``. It is not the
    state dict's own order: a pruner that wraps a layer and unwraps it again registers the layer's
    weight anew, after its bias, so a trained model and the same model rebuilt from its
    architecture would list the two the other way round, and float tensors of the same layer
    would be read back into each other's places.
    """
    modules = dict(folded.named_modules())
    position = {name: i for i, name in enumerate(modules)}
    state = folded.state_dict()

    def key(item: tuple[int, str]) -> tuple[int, int, int]:
        index, name = item
        owner, _, leaf = name.rpartition(".")
        return (position.get(owner, len(position)), _LEAF_RANK.get(leaf, len(_LEAF_RANK)), index)

    slots = []
    for _, name in sorted(enumerate(state), key=key):
        tensor = state[name]
        owner, _, leaf = name.rpartition(".")
        b = int(plan.bits.get(owner, 32))
        if leaf == "weight" and runs_int8(b) and isinstance(modules.get(owner), (nn.Conv2d, nn.Linear)):
            kind = "q"
        elif b == 16:
            kind = "h"
        else:
            kind, b = "f", 32
        slots.append(_Slot(name, kind, tuple(tensor.shape), b))
    return slots


def _header(arch: Arch, plan: CompressionPlan, card: Mapping[str, Any]) -> bytes:
    return "\n".join([_dumps(arch.to_dict()), plan.to_json(), _dumps(dict(card))]).encode("utf-8")


def encode(
    folded: fx.GraphModule,
    *,
    arch: Arch,
    plan: CompressionPlan,
    scales: Mapping[str, torch.Tensor],
    activations: Mapping[str, tuple[float, int]],
    card: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialize a folded model, quantizing low-bit layers with ``scales``, to artifact bytes.

    With a ``card``, its ``bytes`` entry is set to the length of the returned file.
    """
    state = folded.state_dict()
    packed: list[bytes] = []
    weight_scales: list[np.ndarray] = []
    floats: list[np.ndarray] = []
    halves: list[np.ndarray] = []
    for slot in _slots(folded, plan):
        t = state[slot.name].detach().float()
        if slot.kind == "q":
            owner = slot.name.rpartition(".")[0]
            if owner not in scales:
                raise ValueError(f"layer {owner} is planned at {slot.bits} bits but has no weight scales")
            s = scales[owner].detach().float().reshape(-1)
            qmax = 2 ** (slot.bits - 1) - 1
            q = torch.clamp(torch.round(t / s.reshape(-1, *[1] * (t.dim() - 1))), -qmax, qmax).to(torch.int16)
            packed.append(pack_bits((q + qmax).numpy().astype(np.uint8), slot.bits).tobytes())
            weight_scales.append(s.numpy().astype("<f4"))
        elif slot.kind == "h":
            halves.append(t.half().numpy().reshape(-1).astype("<f2"))
        else:
            floats.append(t.numpy().reshape(-1).astype("<f4"))
    pairs = activation_order(activations)
    act_scales = np.array([s for s, _ in pairs], dtype="<f4")
    act_zps = np.array([z for _, z in pairs], dtype=np.int64)
    if act_zps.size and (act_zps.min() < 0 or act_zps.max() > 255):
        raise ValueError("activation zero points must fit in a byte")
    payload = b"".join(
        [
            *packed,
            *(a.tobytes() for a in weight_scales),
            *(a.tobytes() for a in floats),
            *(a.tobytes() for a in halves),
            act_scales.tobytes(),
            act_zps.astype(np.uint8).tobytes(),
        ]
    )

    def assemble(header: bytes) -> bytes:
        body = _HEAD.pack(MAGIC, len(header)) + header + payload
        return body + hashlib.sha256(body).digest()[:CHECKSUM_BYTES]

    if card is None:
        return assemble(_header(arch, plan, {}))
    # The card records the file's own byte count, so settle it by fixed point (two passes at most).
    size = 0
    for _ in range(4):
        blob = assemble(_header(arch, plan, {**card, "bytes": size}))
        if len(blob) == size:
            return blob
        size = len(blob)
    raise RuntimeError("the card's byte count did not settle")


def with_card(blob: bytes, card: Mapping[str, Any], *, source: str = "artifact") -> bytes:
    """``blob`` with ``card``'s entries merged into its card (``bytes`` settled again); weights untouched.

    A candidate's latency figures join its card only once it is timed, which may be on another
    machine than the one that trained it.
    """
    header, payload = _split(bytes(blob), source)
    arch, plan, old = _parse(header, source)

    def assemble(header: bytes) -> bytes:
        body = _HEAD.pack(MAGIC, len(header)) + header + payload
        return body + hashlib.sha256(body).digest()[:CHECKSUM_BYTES]

    size = 0
    for _ in range(4):
        out = assemble(_header(arch, plan, {**old, **card, "bytes": size}))
        if len(out) == size:
            return out
        size = len(out)
    raise RuntimeError("the card's byte count did not settle")


@dataclass(frozen=True)
class Loaded:
    """A loaded artifact: the runnable module and what the file says about it."""

    module: nn.Module
    arch: Arch
    plan: CompressionPlan
    card: dict[str, Any]
    sha256: str
    size_bytes: int
    floor_bytes: float = 0.0
    """:func:`size_floor` of this artifact: what its information needs at the least."""


class _Reader:
    def __init__(self, payload: bytes) -> None:
        self.data = payload
        self.at = 0

    def take(self, nbytes: int) -> bytes:
        if self.at + nbytes > len(self.data):
            raise ValueError("the payload is shorter than its layout")
        out = self.data[self.at : self.at + nbytes]
        self.at += nbytes
        return out

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize), dtype=dtype).copy()


def _split(blob: bytes, source: str) -> tuple[bytes, bytes]:
    """The header and payload of ``blob``, after the signature and checksum are checked."""
    if len(blob) < _HEAD.size or blob[:4] != MAGIC:
        raise SqueezeError(f"`{source}` is not a squeeze artifact: it does not start with the {FORMAT} signature.")
    body, checksum = blob[:-CHECKSUM_BYTES], blob[-CHECKSUM_BYTES:]
    _, n = _HEAD.unpack_from(blob)
    if len(blob) < _HEAD.size + n + CHECKSUM_BYTES or hashlib.sha256(body).digest()[:CHECKSUM_BYTES] != checksum:
        raise SqueezeError(f"`{source}` is damaged: its checksum does not match its contents (truncated or altered).")
    return body[_HEAD.size : _HEAD.size + n], body[_HEAD.size + n :]


def _invalid(source: str, exc: BaseException) -> SqueezeError:
    reason = (str(exc).strip().splitlines() or [""])[0][:200].rstrip(".")
    return SqueezeError(
        f"`{source}` is not a valid squeeze artifact: its checksum holds but its contents do not parse "
        f"({type(exc).__name__}{': ' + reason if reason else ''})."
    )


def _parse(header: bytes, source: str) -> tuple[Arch, CompressionPlan, dict[str, Any]]:
    try:
        arch_line, plan_line, card_line = header.decode("utf-8").split("\n")
        arch = Arch.from_dict(json.loads(arch_line))
        plan = CompressionPlan.from_json(plan_line)
        card = json.loads(card_line)
        if not isinstance(card, dict):
            raise ValueError(f"the card must be a table, but got a {type(card).__name__}")
    except Exception as exc:  # noqa: BLE001 - a checksummed header that does not parse is of another make
        raise _invalid(source, exc) from None
    return arch, plan, card


def _layout(slots: list[_Slot]) -> int:
    """Payload bytes the weights of ``slots`` take, before the activation region."""
    total = 0
    for s in slots:
        if s.kind == "q":
            total += math.ceil(s.count * s.bits / 8) + 4 * s.shape[0]
        else:
            total += s.count * (2 if s.kind == "h" else 4)
    return total


def decode(blob: bytes, *, source: str = "artifact", family: FamilyArg = None, allow: Sequence[str] = ()) -> Loaded:
    """Rebuild the runnable module from artifact bytes; a damaged or refused file gives one SqueezeError.

    Nothing the file names is imported or called: a built-in family is looked up by name, and a
    user's family (``package.module:factory``) is used only when handed over as ``family`` (its
    factory, or a :class:`ModelFamily` of that name) or when its module is listed in ``allow``.
    Every field of the header is checked, and the architecture is laid out on the meta device and
    compared with the bytes the file holds before any tensor is allocated.
    """
    header, payload = _split(bytes(blob), source)
    arch, plan, card = _parse(header, source)
    chosen = family_named(arch.family, source=source, family=family, allow=allow)
    try:
        budget = REGISTRATIONS_FLOOR + REGISTRATIONS_PER_BYTE * len(payload)
        shape = shape_of(arch, chosen, registrations=budget)
        slots = _slots(shape.module, plan)
        need = _layout(slots)
        if need > len(payload) or (len(payload) - need) % ACT_BYTES:
            raise ValueError(f"the payload holds {len(payload)} bytes, but its architecture lays out {need} "
                             f"and {ACT_BYTES} a quantize point")
        folded = materialize(arch, shape, chosen)
        if folded is not shape.module and _slots(folded, plan) != slots:
            raise ValueError("the architecture built for real differs from its layout")
        reader = _Reader(payload)
        ints = {s.name: reader.take(math.ceil(s.count * s.bits / 8)) for s in slots if s.kind == "q"}
        scales = {s.name.rpartition(".")[0]: torch.from_numpy(reader.array("<f4", s.shape[0])) for s in slots if s.kind == "q"}
        state = {}
        for s in slots:
            if s.kind == "f":
                state[s.name] = torch.from_numpy(reader.array("<f4", s.count)).reshape(s.shape)
        for s in slots:
            if s.kind == "h":
                state[s.name] = torch.from_numpy(reader.array("<f2", s.count)).float().reshape(s.shape)
        for s in slots:
            if s.kind == "q":
                qmax = 2 ** (s.bits - 1) - 1
                raw = np.frombuffer(ints[s.name], dtype=np.uint8)
                q = torch.from_numpy(unpack_bits(raw, s.bits, s.count).astype(np.int16) - qmax).reshape(s.shape)
                scale = scales[s.name.rpartition(".")[0]]
                state[s.name] = q.float() * scale.reshape(-1, *[1] * (len(s.shape) - 1))
        rest = len(payload) - reader.at
        if rest % ACT_BYTES:
            raise ValueError("the activation region is not whole")
        count = rest // ACT_BYTES
        act_scales = reader.array("<f4", count).tolist()
        act_zps = reader.array("u1", count).tolist()
        folded.load_state_dict(state, strict=True)
        module = to_int8(folded, dict(plan.bits), scales, list(zip(act_scales, act_zps)), example=arch.example())
    except Exception as exc:  # noqa: BLE001 - a checksummed file that does not parse is of another make
        raise _invalid(source, exc) from None
    return Loaded(
        module=module, arch=arch, plan=plan, card=card, sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob), floor_bytes=_floor(slots, arch=arch, plan=plan, card=card, activations=count),
    )


def size_floor(
    *, arch: Arch, plan: CompressionPlan, card: Mapping[str, Any], activations: int, family: FamilyArg = None,
    allow: Sequence[str] = (),
) -> float:
    """The least bytes that this model's information takes, with no container around it.

    Counted from the architecture rebuilt from ``arch`` (its shapes only; ``family`` and ``allow``
    as for :func:`decode`), not from the file:

    - every kept weight of a layer at ``b`` <= 8 bits: ``b / 8`` bytes (no rounding to a byte);
    - every other parameter (biases, layers left in float): 4 bytes; of 16-bit layers: 2 bytes;
    - weight scales: 4 bytes per output channel of a low-bit layer; weight zero points: nothing,
      the quantization is symmetric so they are all 0 by construction;
    - per activation quantize point: a float32 scale and a 1-byte zero point (``activations`` of them);
    - the plan, the card and ``arch``, each as compact JSON.

    What a file holds beyond this is its container: signature, lengths, line breaks, the padding of
    each packed tensor to a whole byte and the checksum.
    """
    chosen = family_named(arch.family, source="the architecture", family=family, allow=allow)
    return _floor(_slots(shape_of(arch, chosen).module, plan), arch=arch, plan=plan, card=card, activations=activations)


def _floor(slots: list[_Slot], *, arch: Arch, plan: CompressionPlan, card: Mapping[str, Any], activations: int) -> float:
    total = 0.0
    for s in slots:
        total += s.count * s.bits / 8
        if s.kind == "q":
            total += 4 * s.shape[0]
    total += ACT_BYTES * activations
    total += len(_dumps(arch.to_dict()).encode()) + len(plan.to_json().encode()) + len(_dumps(dict(card)).encode())
    return total


def load_artifact(path: str | Path, *, family: FamilyArg = None, allow: Sequence[str] = ()) -> Loaded:
    """Load an artifact file into a runnable module; no unpickling, and nothing the file names is imported.

    A file of a user's family loads only with ``family`` (its factory or :class:`ModelFamily`) or
    its module in ``allow``; see :func:`decode`.
    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise SqueezeError(f"cannot read artifact `{p}`: {exc.strerror}.") from None
    return decode(blob, source=str(p), family=family, allow=allow)
