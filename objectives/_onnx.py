"""A candidate as one ONNX model: QDQ int8 layers, half-precision storage, float elsewhere.

The folded float network is exported with ``torch.onnx.export`` (the ``torch.export``-based
exporter; the TorchScript one is deprecated), then rewritten in the QDQ form that ONNX Runtime's
CPU provider fuses into its integer kernels (``QLinearConv``, ``QGemm``):

- a layer at 8 bits or fewer (:func:`squeeze.spaces.runs_int8`) keeps its weights as integers with
  the plan's own per-output-channel NNI scales (``DequantizeLinear``, ``axis=0``, zero points 0),
  its bias as int32 on the scale ``input scale x weight scale`` (what ONNX Runtime's fusion asks
  for), and a ``QuantizeLinear``/``DequantizeLinear`` pair on its input; a convolution also gets
  one on its output, after its ``Relu`` where one follows (zero point 0: ONNX Runtime then drops
  the ``Relu`` and runs convolution, ReLU and quantize as one ``QLinearConv``, as ``torch.ao``
  runs ``ConvReLU2d``). A ``Gemm``'s output stays float (ONNX Runtime's ``QGemm`` gives float).
  Each quantize point lets ONNX Runtime saturate at 255, where ``torch.ao`` clamps at 127;
- weights below 8 bits are stored in the narrowest integer type that ONNX and ONNX Runtime take
  and cast to int8 in the graph: ``int4`` (opset 21) for 3 and 4 bits, ``int2`` (opset 25) for 2;
  ONNX Runtime folds the cast when it loads the model, so those layers run on the same int8
  kernels (measured: its CPU provider does not fuse a convolution whose weight ``DequantizeLinear``
  reads ``int4`` directly, it runs it in float). 5 to 7 bits are stored in int8;
- a 16-bit layer's weight and bias are stored as float16 and cast to float in the graph: ONNX
  Runtime's CPU provider has no float16 convolution on x86, and folds the cast at load;
- everything else stays float32.

Activation quantize points take the per-tensor affine parameters of ``torch.ao``'s ``MinMaxObserver``
with quint8 and the range 0..127 (:data:`ACT_QMIN`, :data:`ACT_QMAX`, the same 7-bit range and
calibration batches as the ``torch`` runtime): min and max of each int8 layer's input and output
over training batches (:func:`activation_ranges`, :func:`minmax_qparams`).

The file around the model, its metadata and the checks before it is run: ``_onnx_file.py``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from squeeze.spaces import CompressionPlan, SqueezeError, runs_int8

from ._materialize import ACT_QMAX, ACT_QMIN
from ._onnx_file import INPUT, OUTPUT, STANDARD_DOMAINS, serialize

OPSET = 21
"""``QuantizeLinear``/``DequantizeLinear`` and ``Cast`` take int4 from opset 21."""
OPSET_INT2 = 25
"""int2 tensors (2-bit weights) need opset 25; a model without them keeps :data:`OPSET`."""
QParams = tuple[float, int]
Range = tuple[float, float]


def storage_bits(bits: int) -> int:
    """The width a weight of a ``bits``-bit layer is stored at in ONNX: 2, 4 or 8."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


# --------------------------------------------------------------------------- calibration


def minmax_qparams(low: float, high: float) -> QParams:
    """``MinMaxObserver``'s per-tensor affine quint8 parameters on [ACT_QMIN, ACT_QMAX], in float32 as it computes them."""
    lo = torch.clamp(torch.tensor(low, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.tensor(high, dtype=torch.float32), min=0.0)
    scale = torch.clamp((hi - lo) / float(ACT_QMAX - ACT_QMIN), min=torch.finfo(torch.float32).eps)
    zero = torch.clamp(ACT_QMIN - torch.round(lo / scale).to(torch.int), ACT_QMIN, ACT_QMAX)
    return float(scale), int(zero)


@torch.no_grad()
def activation_ranges(
    folded: nn.Module, layers: Iterable[str], *, calibration: torch.Tensor, batch: int = 256
) -> dict[str, dict[str, Range]]:
    """The min and max of the input (``"in"``) and output (``"out"``) of each of ``layers`` over ``calibration``.

    Calibration batches come from the training data only. :func:`minmax_qparams` turns a range
    into quantize parameters by ``torch.ao``'s min-max rule, so the ``torch`` runtime, which
    calibrates the same tensors on the same batches, quantizes a layer's input alike.
    """
    modules = dict(folded.named_modules())
    seen: dict[str, dict[str, list[float]]] = {}
    handles = []

    def watch(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            for side, t in (("in", inputs[0]), ("out", output)):
                lo, hi = float(t.min()), float(t.max())
                box = seen.setdefault(name, {}).setdefault(side, [lo, hi])
                box[0], box[1] = min(box[0], lo), max(box[1], hi)

        return hook

    for name in layers:
        handles.append(modules[name].register_forward_hook(watch(name)))
    training = folded.training
    folded.eval()
    try:
        for start in range(0, len(calibration), batch):
            folded(calibration[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
        folded.train(training)
    return {name: {side: (box[0], box[1]) for side, box in sides.items()} for name, sides in seen.items()}


# --------------------------------------------------------------------------- float export


def export_float(folded: nn.Module, *, example: torch.Tensor) -> onnx.ModelProto:
    """``folded`` as a float ONNX model with a dynamic batch, stripped of the exporter's debugging notes.

    Parameters keep their module names as initializer names (``stages.0.0.conv.weight``), which is
    how the rewrite finds each layer.
    """
    folded.eval()
    batch = torch.export.Dim("batch")
    # torch.export takes a dimension of size 1 for a constant: trace with two samples.
    pair = example[:1].expand(2, *example.shape[1:]).contiguous()
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):  # the exporter reports its progress on stdout
            program = torch.onnx.export(
                folded, (pair,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                opset_version=OPSET, dynamic_shapes=({0: batch},), verbose=False, optimize=True,
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure means the same to the user
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SqueezeError(
            f"the model cannot be exported to ONNX ({type(exc).__name__}: {reason}); "
            f"use `latency.runtime = \"torch\"` for this model family."
        ) from None
    model = program.model_proto
    _strip(model)
    return model


def _strip(model: onnx.ModelProto) -> None:
    """Drop what only helps debugging (stack traces, module paths, shape annotations): it is not the model."""
    graph = model.graph
    del model.metadata_props[:]
    model.doc_string = ""
    graph.doc_string = ""
    del graph.value_info[:]
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        node.name = ""
    for value in (*graph.input, *graph.output, *graph.initializer):
        del value.metadata_props[:]
        value.doc_string = ""


# --------------------------------------------------------------------------- the QDQ rewrite


class _Graph:
    """The node list of a float model, with the tensors each node consumes and produces indexed."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def layer_node(self, layer: str) -> onnx.NodeProto:
        weight = f"{layer}.weight"
        for node in self.consumers.get(weight, []):
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] == weight:
                return node
        raise ValueError(f"layer {layer} is not a Conv or Gemm of the exported ONNX graph")

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def replace_init(self, tensor: TensorProto) -> None:
        old = self.inits[tensor.name]
        old.CopyFrom(tensor)


def _int_tensor(values: np.ndarray, bits: int, name: str) -> TensorProto:
    """Integers in ``[-(2**(b-1)-1), 2**(b-1)-1]`` as a packed ONNX int2, int4 or int8 tensor."""
    import ml_dtypes

    dtype = {2: ml_dtypes.int2, 4: ml_dtypes.int4, 8: np.int8}[bits]
    return numpy_helper.from_array(values.astype(np.int8).astype(dtype), name)


def quantize(
    model: onnx.ModelProto,
    *,
    plan: CompressionPlan,
    scales: Mapping[str, torch.Tensor],
    activations: Mapping[str, Mapping[str, Range]],
) -> onnx.ModelProto:
    """Rewrite the float ``model`` in place as the plan's QDQ model (see the module's docstring); returns it."""
    g = _Graph(model)
    bits = {name: int(b) for name, b in plan.bits.items()}
    int8 = sorted(name for name, b in bits.items() if runs_int8(b) and name in scales)
    missing = sorted(name for name, b in bits.items() if runs_int8(b) and name not in scales)
    if missing:
        raise ValueError(f"layer {missing[0]} is planned at {bits[missing[0]]} bits but has no weight scales")
    nodes = {name: g.layer_node(name) for name in int8}
    # Tensors that get a quantize point, with their parameters: every int8 layer's input ...
    points: dict[str, QParams] = {}
    for name in int8:
        points.setdefault(nodes[name].input[0], minmax_qparams(*activations[name]["in"]))
    # ... and a convolution's output: after its Relu where one follows (ONNX Runtime then runs Conv, Relu
    # and the quantize as one integer kernel, as torch.ao fuses ConvReLU2d), else on the output itself.
    for name in int8:
        node = nodes[name]
        out = node.output[0]
        if node.op_type != "Conv" or out in points:
            continue
        low, high = activations[name]["out"]
        users = g.consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            # ReLU is monotone: its output ranges over [max(low, 0), max(high, 0)], and the min-max rule takes 0 in.
            points.setdefault(users[0].output[0], minmax_qparams(0.0, high))
        else:
            points[out] = minmax_qparams(low, high)

    new_inits: list[TensorProto] = []
    before: dict[int, list[onnx.NodeProto]] = {}
    widest = OPSET
    for name in int8:
        node = nodes[name]
        b = bits[name]
        stored = storage_bits(b)
        widest = max(widest, OPSET_INT2 if stored == 2 else OPSET)
        w = g.array(node.input[1])
        s = scales[name].detach().float().reshape(-1).numpy().astype(np.float32)
        if s.shape[0] != w.shape[0]:
            raise ValueError(f"layer {name} has {w.shape[0]} output channels but {s.shape[0]} weight scales")
        qmax = 2 ** (b - 1) - 1
        q = np.clip(np.round(w / s.reshape(-1, *[1] * (w.ndim - 1))), -qmax, qmax)
        g.replace_init(_int_tensor(q, stored, node.input[1]))
        pre: list[onnx.NodeProto] = []
        weight_int8 = node.input[1]
        if stored != 8:
            weight_int8 = f"{node.input[1]}.int8"
            pre.append(helper.make_node("Cast", [node.input[1]], [weight_int8], to=TensorProto.INT8))
        # No zero point: the quantization is symmetric, and DequantizeLinear takes 0 when none is given.
        new_inits.append(numpy_helper.from_array(s, f"{name}.weight.scale"))
        pre.append(helper.make_node("DequantizeLinear", [weight_int8, f"{name}.weight.scale"],
                                    [f"{node.input[1]}.dq"], axis=0))
        node.input[1] = f"{node.input[1]}.dq"
        if len(node.input) > 2 and node.input[2]:
            x_scale = np.float32(points[node.input[0]][0])
            bias_scale = (x_scale * s).astype(np.float32)
            bias = g.array(node.input[2])
            qb = np.clip(np.round(bias / bias_scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
            g.replace_init(numpy_helper.from_array(qb, node.input[2]))
            new_inits.append(numpy_helper.from_array(bias_scale, f"{name}.bias.scale"))
            pre.append(helper.make_node("DequantizeLinear", [node.input[2], f"{name}.bias.scale"],
                                        [f"{node.input[2]}.dq"], axis=0))
            node.input[2] = f"{node.input[2]}.dq"
        before[id(node)] = pre

    for name, b in bits.items():
        if b == 16:
            _half(g, name, before)

    # Quantize points: one Q/DQ pair per tensor, and every reader of the tensor reads its DQ.
    after: dict[str, list[onnx.NodeProto]] = {}
    for tensor, (scale, zero) in points.items():
        sname, zname = f"{tensor}.q.scale", f"{tensor}.q.zero"
        new_inits += [numpy_helper.from_array(np.array(scale, np.float32), sname),
                      numpy_helper.from_array(np.array(zero, np.uint8), zname)]
        for reader in g.consumers.get(tensor, []):
            for i, value in enumerate(reader.input):
                if value == tensor:
                    reader.input[i] = f"{tensor}.dq"
        after[tensor] = [
            helper.make_node("QuantizeLinear", [tensor, sname, zname], [f"{tensor}.q"]),
            helper.make_node("DequantizeLinear", [f"{tensor}.q", sname, zname], [f"{tensor}.dq"]),
        ]
        if tensor in (o.name for o in model.graph.output):
            raise ValueError(f"the graph output {tensor} cannot be a quantize point")

    ordered: list[onnx.NodeProto] = []
    for value in model.graph.input:
        ordered += after.pop(value.name, [])
    for node in model.graph.node:
        ordered += before.get(id(node), [])
        ordered.append(node)
        for out in node.output:
            ordered += after.pop(out, [])
    if after:
        raise ValueError(f"no node produces the tensor {next(iter(after))}")
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    model.graph.initializer.extend(new_inits)
    _set_opset(model, widest)
    return model


def _half(g: _Graph, layer: str, before: dict[int, list[onnx.NodeProto]]) -> None:
    """Store a 16-bit layer's weight and bias as float16, cast back to float in the graph."""
    node = g.layer_node(layer)
    pre = before.setdefault(id(node), [])
    for i in (1, 2):
        if len(node.input) <= i or not node.input[i] or node.input[i] not in g.inits:
            continue
        name = node.input[i]
        g.replace_init(numpy_helper.from_array(g.array(name).astype(np.float16), name))
        pre.append(helper.make_node("Cast", [name], [f"{name}.float"], to=TensorProto.FLOAT))
        node.input[i] = f"{name}.float"


def _set_opset(model: onnx.ModelProto, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain in STANDARD_DOMAINS:
            entry.version = max(entry.version, version)


# --------------------------------------------------------------------------- the file


def build_model(
    folded: fx.GraphModule | nn.Module,
    *,
    plan: CompressionPlan,
    scales: Mapping[str, torch.Tensor],
    activations: Mapping[str, Mapping[str, Range]],
    example: torch.Tensor,
) -> onnx.ModelProto:
    """The plan's ONNX model: the folded network exported, then rewritten as the plan says (:func:`quantize`)."""
    model = export_float(folded, example=example)
    if scales or any(int(b) == 16 for b in plan.bits.values()):
        quantize(model, plan=plan, scales=scales, activations=activations)
    model.producer_name = "squeeze-search"
    model.producer_version = ""
    _compact(model)
    return model


def _compact(model: onnx.ModelProto) -> None:
    """Give every tensor but the graph's input and output and the layers' parameters a short name.

    The file's bytes are the size objective, and names such as ``stages.1.0.conv.bias.dq`` would
    cost more than some layers' weights. A parameter keeps its module's name (``classifier.weight``).
    """
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    keep |= {t.name for t in graph.initializer if t.name.endswith((".weight", ".bias"))}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in short:
            number = len(short)
            digits = ""
            while True:
                number, rest = divmod(number, 36)
                digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
                if not number:
                    break
            short[name] = f"_{digits}"
        return short[name]

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]


def writer(
    folded: fx.GraphModule | nn.Module,
    *,
    plan: CompressionPlan,
    scales: Mapping[str, torch.Tensor],
    calibration: torch.Tensor,
    example: torch.Tensor,
    io: Mapping[str, Any],
) -> Callable[..., bytes]:
    """Calibrate and build the plan's ONNX model once; returns ``write(card=None) -> bytes``.

    The model is exported once: a draft (no card) is measured, and the stored file differs from
    it only by the card in its metadata.
    """
    activations = activation_ranges(folded, sorted(scales), calibration=calibration) if scales else {}
    model = build_model(folded, plan=plan, scales=scales, activations=activations, example=example)

    def write(card: Mapping[str, Any] | None = None) -> bytes:
        return serialize(model, plan=plan, io=io, card=card)

    return write


