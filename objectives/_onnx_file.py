"""The ONNX file squeeze writes: its metadata, written and read, and the checks before anything runs it.

``metadata_props`` holds ``squeeze.format``, ``squeeze.io`` (what the model takes and gives, and the
normalisation of its inputs), ``squeeze.plan`` and ``squeeze.card`` (the measured figures). A file
is data from anywhere: :func:`check_model` refuses what is not a plain, standard-operator model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import onnx
from onnx import TensorProto

from squeeze.spaces import CompressionPlan, SqueezeError

FORMAT = "squeeze-onnx/1"
INPUT, OUTPUT = "input", "logits"
STANDARD_DOMAINS = ("", "ai.onnx")


def serialize(
    model: onnx.ModelProto, *, plan: CompressionPlan, io: Mapping[str, Any], card: Mapping[str, Any] | None = None
) -> bytes:
    """``model`` as file bytes, with the squeeze metadata: what is stored, measured and exported.

    ``io`` says what the model takes and gives (:func:`io_card`); ``card`` holds the measured
    figures, and its ``bytes`` entry is set to the length of the returned file, as in ``SQZ1``.
    """
    base = {"format": FORMAT, "io": _dumps(dict(io)), "plan": plan.to_json()}
    if card is None:
        _set_metadata(model, base)
        return model.SerializeToString()
    size = 0
    for _ in range(4):
        _set_metadata(model, {**base, "card": _dumps({**card, "bytes": size})})
        blob = model.SerializeToString()
        if len(blob) == size:
            return blob
        size = len(blob)
    raise RuntimeError("the card's byte count did not settle")


def with_card(blob: bytes, card: Mapping[str, Any]) -> bytes:
    """``blob`` with ``card``'s entries merged into its ``squeeze.card`` (``bytes`` settled again); graph untouched."""
    model = onnx.load_from_string(blob)
    entries = {prop.key.removeprefix("squeeze."): prop.value for prop in model.metadata_props
               if prop.key.startswith("squeeze.")}
    old = json.loads(entries.pop("card", "{}"))
    size = 0
    for _ in range(4):
        _set_metadata(model, {**entries, "card": _dumps({**old, **card, "bytes": size})})
        out = model.SerializeToString()
        if len(out) == size:
            return out
        size = len(out)
    raise RuntimeError("the card's byte count did not settle")


def io_card(
    *, in_channels: int, input_size: tuple[int, int], num_classes: int,
    mean: Iterable[float] | None = None, std: Iterable[float] | None = None,
) -> dict[str, Any]:
    """What the model takes and gives, for someone with nothing but the file."""
    card: dict[str, Any] = {
        "input": {"name": INPUT, "shape": ["batch", in_channels, *input_size], "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": ["batch", num_classes], "dtype": "float32", "meaning": "class logits"},
    }
    if mean is not None and std is not None:
        card["input"]["normalisation"] = {
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "rule": "input = (pixels - mean) / std per channel, pixels scaled to [0, 1]",
        }
    else:
        card["input"]["normalisation"] = None
    return card


def _set_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=f"squeeze.{key}", value=value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_model(blob: bytes, *, source: str = "the ONNX model") -> onnx.ModelProto:
    """Parse ``blob`` and refuse what a plain ONNX Runtime session should not be handed.

    Only standard ONNX operators (no custom domains, no local functions) and no external data (a
    tensor that names a file would make loading read that file). One sentence names ``source``.
    """
    try:
        model = onnx.load_from_string(bytes(blob))
    except Exception:  # noqa: BLE001 - protobuf raises several kinds for bytes of another make
        raise SqueezeError(f"`{source}` is not an ONNX model: its bytes do not parse.") from None
    if not model.graph.node:
        raise SqueezeError(f"`{source}` is not a squeeze ONNX model: its graph is empty.")
    domains = {entry.domain for entry in model.opset_import} | {node.domain for node in model.graph.node}
    foreign = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if foreign or len(model.functions):
        what = f"operators of the domain {foreign[0]!r}" if foreign else "local functions"
        raise SqueezeError(f"`{source}` uses {what}; only standard ONNX operators are run.")
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise SqueezeError(f"`{source}` keeps tensor {tensor.name!r} in an external file; only self-contained models are run.")
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.g.node or attr.graphs:
                raise SqueezeError(f"`{source}` has subgraphs (node {node.op_type}); only flat graphs are run.")
    return model


def metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The squeeze entries of a model's ``metadata_props``, parsed (``plan`` as a :class:`CompressionPlan`)."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith("squeeze."):
            continue
        key = prop.key.removeprefix("squeeze.")
        out[key] = prop.value if key == "format" else (
            CompressionPlan.from_json(prop.value) if key == "plan" else json.loads(prop.value))
    return out
