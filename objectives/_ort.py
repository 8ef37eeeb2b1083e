"""ONNX models run by ONNX Runtime's CPU provider, called like a module: a tensor in, a tensor out.

Accuracy and latency of an ``onnxruntime`` study are taken through :class:`OrtModel`, on the very
bytes that are stored for the trial. A session is built with a fixed thread count (the latency
protocol's ``threads``), one inter-op thread and every graph optimization ONNX Runtime has (the
level a plain ``InferenceSession(path)`` uses too), so the QDQ nodes are fused into integer kernels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto

from squeeze.spaces import CompressionPlan, SqueezeError

from ._onnx import STANDARD_DOMAINS

PROVIDER = "CPUExecutionProvider"


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


def session_options(*, threads: int) -> ort.SessionOptions:
    """ONNX Runtime's options for every session squeeze builds: ``threads`` intra-op threads, all optimizations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ONNX Runtime's notes are not the user's business
    return options


class OrtModel:
    """An ONNX model in an ONNX Runtime CPU session, with the calling convention of an ``nn.Module``.

    ``model(x)`` takes a float32 tensor ``N, C, H, W`` and returns the logits as a tensor. ``eval()``
    and ``train()`` are there so that code written for modules (accuracy, the latency protocol)
    takes this too; a session has no training mode.
    """

    def __init__(self, blob: bytes, *, threads: int = 1, source: str = "the ONNX model") -> None:
        check_model(blob, source=source)
        try:
            self.session = ort.InferenceSession(bytes(blob), session_options(threads=threads), providers=[PROVIDER])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own kinds for models it refuses
            reason = (str(exc).strip().splitlines() or [""])[0][:200].rstrip(".")
            raise SqueezeError(f"ONNX Runtime cannot load `{source}` ({reason}).") from None
        self.input = self.session.get_inputs()[0].name
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])

    def eval(self) -> OrtModel:
        return self

    def train(self, mode: bool = True) -> OrtModel:
        return self


def runtime_version() -> str:
    """ONNX Runtime's version and provider, as recorded with every measurement taken in it."""
    return f"onnxruntime {ort.__version__} {PROVIDER}"


@dataclass(frozen=True)
class LoadedOnnx:
    """An ONNX file squeeze wrote: the runnable model and what its metadata says."""

    module: OrtModel
    plan: CompressionPlan
    card: dict[str, Any]
    io: dict[str, Any]
    sha256: str
    size_bytes: int


def decode_onnx(blob: bytes, *, source: str = "the ONNX model", threads: int = 1) -> LoadedOnnx:
    """An ONNX model's bytes as a runnable :class:`OrtModel`, with its plan, card and input/output description."""
    model = check_model(blob, source=source)
    try:
        meta: Mapping[str, Any] = metadata(model)
    except Exception:  # noqa: BLE001 - metadata of another make
        raise SqueezeError(f"`{source}` is not a squeeze ONNX model: its metadata does not parse.") from None
    return LoadedOnnx(
        module=OrtModel(blob, threads=threads, source=source),
        plan=meta.get("plan", CompressionPlan()),
        card=dict(meta.get("card", {})),
        io=dict(meta.get("io", {})),
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob),
    )


def load_onnx(path: str | Path, *, threads: int = 1) -> LoadedOnnx:
    """Load an ONNX file written by squeeze into ONNX Runtime; nothing but standard operators is run."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise SqueezeError(f"cannot read the ONNX model `{p}`: {exc.strerror}.") from None
    return decode_onnx(blob, source=str(p), threads=threads)


def deploy(
    blob: bytes, *, runtime: str = "torch", family: Any = None, threads: int = 1, source: str = "artifact"
) -> Any:
    """The runnable model of stored bytes in ``runtime``: the decoded ``SQZ1`` module, or an ONNX Runtime session.

    ``family`` decodes a ``SQZ1`` artifact of a user's family (see ``decode``); an ONNX model needs
    none, and ``threads`` fixes its session's intra-op threads (the latency protocol's).
    """
    if runtime == "onnxruntime":
        return OrtModel(blob, threads=threads, source=source)
    from ._artifact import decode

    return decode(blob, source=source, family=family).module
