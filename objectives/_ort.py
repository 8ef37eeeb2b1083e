"""ONNX models run by ONNX Runtime's CPU provider, called like a module: a tensor in, a tensor out.

Accuracy and latency of an ``onnxruntime`` study are taken through :class:`OrtModel`, on the very
bytes that are stored for the trial. A session is built with a fixed thread count (the latency
protocol's ``threads``), one inter-op thread and every graph optimization ONNX Runtime has (the
level a plain ``InferenceSession(path)`` uses too), so the QDQ nodes are fused into integer kernels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from squeeze.spaces import CompressionPlan, SqueezeError

from ._onnx_file import check_model, metadata

PROVIDER = "CPUExecutionProvider"


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
