"""From a trained, masked, calibrated model to the deployable one.

Three steps, each real: pruned channels are physically removed (Torch-Pruning's dependency
graph, so coupled layers follow their producer), batch norm is folded into the convolutions,
and layers at 8 bits or fewer run on PyTorch's x86 int8 kernels through ``torch.ao`` FX, with
the weight scales the NNI quantizer trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.fx.experimental.optimization as fx_opt
from torch import fx, nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.observer import MinMaxObserver, ObserverBase
from torch.ao.quantization.fx import utils as fx_utils
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from squeeze.spaces import SqueezeError, runs_int8

ENGINE = "x86"
"""PyTorch's quantized engine the int8 modules are built for (x86: fbgemm and oneDNN kernels chosen per operator)."""


@contextlib.contextmanager
def int8_engine(name: str) -> Iterator[None]:
    """Build int8 modules for PyTorch's quantized engine ``name`` inside the block (to compare engines)."""
    global ENGINE
    if name not in torch.backends.quantized.supported_engines:
        raise SqueezeError(f"the quantized engine must be one of {torch.backends.quantized.supported_engines}, "
                           f"but got {name!r}.")
    before, ENGINE = ENGINE, name
    try:
        yield
    finally:
        ENGINE = before
ACT_QMIN, ACT_QMAX = 0, 127
"""Activations are quint8 with a 7-bit range: x86's fbgemm kernels can overflow their 16-bit
accumulators with the full range on CPUs without VNNI, and PyTorch's own x86 qconfig does the same."""


def remove_channels(model: nn.Module, keep: Mapping[str, list[int]], *, example: torch.Tensor) -> nn.Module:
    """Physically remove every output channel not in ``keep[layer]``, in place; returns the model."""
    import torch_pruning as tp

    if not keep:
        return model
    model.eval()
    # Torch-Pruning traces the graph through autograd, so it must work inside a caller's no_grad too.
    with torch.inference_mode(False), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example.clone())
    modules = dict(model.named_modules())
    for name, kept in keep.items():
        layer = modules[name]
        total = layer.weight.shape[0]
        drop = sorted(set(range(total)) - set(kept))
        if not drop:
            continue
        if len(drop) >= total:
            raise ValueError(f"layer {name} would lose every channel")
        # The layer's own pruner: a linear layer (a hidden classifier layer) as well as a convolution.
        group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, idxs=drop)
        group.prune()
    return model


def out_channels(model: nn.Module, layers: list[str]) -> dict[str, int]:
    """The number of output channels of each named layer."""
    modules = dict(model.named_modules())
    return {name: int(modules[name].weight.shape[0]) for name in layers}


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A traced copy of ``model`` with every conv-BN pair folded into one conv with a bias."""
    model.eval()
    folded = fx_opt.fuse(model, inplace=False)
    for module in folded.modules():
        if isinstance(module, nn.Conv2d) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.out_channels))
    return folded


class FixedWeightObserver(ObserverBase):
    """Per-output-channel symmetric weight qparams fixed to the scales the NNI quantizer trained."""

    def __init__(self, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.qint8, **kwargs) -> None:
        super().__init__(dtype=dtype)
        self.qscheme = torch.per_channel_symmetric
        self.ch_axis = 0
        self.quant_min = -(2 ** (bits - 1) - 1)
        self.quant_max = 2 ** (bits - 1) - 1
        self.register_buffer("scale", scale.detach().double().clone())
        self.register_buffer("zero_point", torch.zeros(len(scale), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point


class FixedActivationObserver(ObserverBase):
    """Per-tensor affine activation qparams restored from an artifact."""

    def __init__(self, scale: float, zero_point: int, dtype: torch.dtype = torch.quint8, **kwargs) -> None:
        super().__init__(dtype=dtype)
        self.qscheme = torch.per_tensor_affine
        self.quant_min, self.quant_max = ACT_QMIN, ACT_QMAX
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point


def _qconfig_mapping(bits: Mapping[str, int], scales: Mapping[str, torch.Tensor]) -> QConfigMapping:
    activation = MinMaxObserver.with_args(dtype=torch.quint8, quant_min=ACT_QMIN, quant_max=ACT_QMAX)
    mapping = QConfigMapping().set_global(None)
    for name, b in bits.items():
        if runs_int8(b) and name in scales:
            weight = FixedWeightObserver.with_args(scale=scales[name], bits=b)
            mapping.set_module_name(name, QConfig(activation=activation, weight=weight))
    return mapping


@contextlib.contextmanager
def _forgetting_models() -> Iterator[None]:
    """Let torch.ao's FX passes inside the block keep no model alive after it.

    Their device lookup (``torch.ao.quantization.fx.utils.assert_and_get_unique_device``) is an unbounded
    ``functools.cache`` keyed by the module: every model prepared or converted stayed in memory for the
    life of the process, a whole copy per trial, which grows a worker by gigabytes on a large network.
    """
    try:
        yield
    finally:
        clear = getattr(fx_utils.assert_and_get_unique_device, "cache_clear", None)
        if clear is not None:
            clear()


def _prepare(folded: fx.GraphModule, bits: Mapping[str, int], scales: Mapping[str, torch.Tensor], example: torch.Tensor) -> fx.GraphModule:
    torch.backends.quantized.engine = ENGINE
    # torch.ao's FX quantization warns that it is deprecated (its successors: torchao's pt2e quantization,
    # and for deployment the `onnxruntime` runtime); that warning is the user's to see, so it is not hidden.
    with _forgetting_models():
        return prepare_fx(folded, _qconfig_mapping(bits, scales), example_inputs=(example,))


def _observers(prepared: fx.GraphModule) -> list[str]:
    return sorted((name for name, m in prepared.named_children() if isinstance(m, ObserverBase)), key=_observer_key)


def _observer_key(name: str) -> tuple[int, str]:
    # FX numbers observers activation_post_process_0, _1, ... _10: order by length first, so 10 follows 9.
    return (len(name), name)


@torch.no_grad()
def calibrate(
    folded: fx.GraphModule,
    bits: Mapping[str, int],
    scales: Mapping[str, torch.Tensor],
    *,
    example: torch.Tensor,
    calibration: torch.Tensor,
) -> dict[str, tuple[float, int]]:
    """Activation qparams (scale, zero point) per observer, from training batches only."""
    if not scales:
        return {}
    prepared = _prepare(folded, bits, scales, example)
    prepared.eval()
    for start in range(0, len(calibration), 256):
        prepared(calibration[start : start + 256])
    out = {}
    for name in _observers(prepared):
        scale, zp = getattr(prepared, name).calculate_qparams()
        out[name] = (float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]))
    return out


def to_int8(
    folded: fx.GraphModule,
    bits: Mapping[str, int],
    scales: Mapping[str, torch.Tensor],
    activations: Mapping[str, tuple[float, int]] | Sequence[tuple[float, int]],
    *,
    example: torch.Tensor,
) -> nn.Module:
    """Convert ``folded`` to a model whose low-bit layers run on int8 kernels, no data needed.

    ``activations`` maps each observer to its (scale, zero point), as :func:`calibrate` returns
    them, or lists them in :func:`activation_order` (an artifact stores no observer names: the
    graph rebuilt from its architecture names them again).
    """
    if not scales:
        if activations:
            raise ValueError("activation scales were given for a model with no int8 layer")
        return folded.eval()
    prepared = _prepare(folded, bits, scales, example)
    names = _observers(prepared)
    if isinstance(activations, Mapping):
        if set(names) != set(activations):
            raise ValueError("the activation scales do not match the rebuilt graph")
        values = [activations[n] for n in names]
    else:
        values = list(activations)
        if len(values) != len(names):
            raise ValueError(f"the graph has {len(names)} activation observers, but {len(values)} scales were given")
    for name, (scale, zp) in zip(names, values):
        setattr(prepared, name, FixedActivationObserver(scale, zp))
    with _forgetting_models():
        converted = convert_fx(prepared).eval()
    return dequantize_where_needed(converted, example)


@torch.no_grad()
def dequantize_where_needed(model: fx.GraphModule, example: torch.Tensor) -> fx.GraphModule:
    """Give every operation that cannot take a quantized input a dequantized one, in place.

    FX's converter can hand a quantized tensor to an operation left in float: a value that feeds
    both an int8 layer and a residual addition, through a pass-through op such as ReLU or an
    identity max-pool, reaches the addition still quantized. Running the graph once on ``example``
    finds each operation that fails on quantized inputs; a ``dequantize`` is put before it, so
    operations no int8 kernel supports (additions, squeeze-excitation products, hardswish) stay in
    float rather than fail. Graphs that run as they are come back unchanged.
    """
    graph = model.graph
    env: dict[fx.Node, object] = {}
    changed = False

    def value(arg: object) -> object:
        return fx.node.map_arg(arg, lambda n: env[n])

    def run(node: fx.Node) -> object:
        args, kwargs = value(node.args), value(node.kwargs)
        if node.op == "call_module":
            return model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)

    for node in list(graph.nodes):
        if node.op == "placeholder":
            env[node] = example[:1]
        elif node.op == "get_attr":
            env[node] = _attr(model, node.target)
        elif node.op in ("call_module", "call_function", "call_method"):
            try:
                env[node] = run(node)
            except (RuntimeError, NotImplementedError):
                quantized = [n for n in node.all_input_nodes if isinstance(env[n], torch.Tensor) and env[n].is_quantized]
                if not quantized:
                    raise
                for source in quantized:
                    with graph.inserting_before(node):
                        float_node = graph.call_method("dequantize", (source,))
                    env[float_node] = env[source].dequantize()
                    node.replace_input_with(source, float_node)
                env[node] = run(node)
                changed = True
    if changed:
        graph.lint()
        model.recompile()
    return model


def _attr(model: nn.Module, target: str) -> object:
    obj: object = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def activation_order(activations: Mapping[str, tuple[float, int]]) -> list[tuple[float, int]]:
    """The (scale, zero point) pairs of ``activations`` in the graph's observer order."""
    return [activations[n] for n in sorted(activations, key=_observer_key)]
