"""Layer discovery on real graphs: which output channels can be removed together.

Torch-Pruning's dependency graph follows every coupling of a traced forward pass: channels tied
by a residual addition or a multiplication (squeeze-excitation), depthwise convolutions that must
follow their producer, batch norms, concatenations. Each *group* is a set of layers whose output
channels are removed together; it is named after its leading layer (the first of its convolutions
or linear layers in module order), and that is the name a ``sparsity.<layer>`` parameter carries.
The classifier (the last convolution or linear layer the forward pass runs) keeps its outputs:
its group is never offered.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._errors import SqueezeError

PROBE_SIZES = (32, 28, 64, 224, 16, 8)
"""Square input sizes tried, in order, when a model's input size is not known: the first that runs
is used to trace the graph (groups do not depend on it for networks that pool globally)."""

_ROOTS = (nn.Conv2d, nn.Linear)


GRAPH_MEMORY = 1024**3
"""Bytes of address space Torch-Pruning may take while it builds a graph, besides eight times the model's weights.

On some networks (torchvision's Swin) its index mappings grow until the machine runs out of memory;
the cap turns that into a :class:`GraphError` (pruning off) instead."""


@contextlib.contextmanager
def memory_cap(model: nn.Module) -> Iterator[None]:
    """Cap this process's address space at its size now plus :data:`GRAPH_MEMORY` and 8x ``model``'s weights.

    Where the platform cannot (no ``resource`` module, no ``/proc``), or a tighter cap is already
    set, nothing changes. The cap is lifted on leaving, whatever happened inside.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm", encoding="ascii") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError):
        yield
        return
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cap = size + GRAPH_MEMORY + 8 * weights
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class GraphError(RuntimeError):
    """Torch-Pruning cannot build the dependency graph of a network (its message says why).

    Not bad input: a network whose graph cannot be traced is still searched over bit-widths and
    students, with pruning off (``squeeze check`` says so).
    """


@dataclass(frozen=True)
class Group:
    """Layers whose output channels are removed together; ``leader`` names the group."""

    leader: str
    members: tuple[str, ...]
    """Every convolution, linear layer and normalisation whose output channels follow the leader's."""


_CACHE: OrderedDict[Hashable, tuple[Group, ...]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def topology_key(model: nn.Module, *, extra: Hashable = ()) -> Hashable:
    """A key that is equal for two models of one family with the same layers, whatever their widths.

    Module names and types fix the graph of the built-in families once each block's residual flag
    (``use_res_connect``, which they set from the teacher's configuration) is included; widths do not
    change which channels are coupled, so a pruned student shares its unpruned self's groups.
    """
    layers = tuple((name, type(m).__qualname__, getattr(m, "use_res_connect", None)) for name, m in model.named_modules())
    return (type(model).__qualname__, layers, extra)


def _in_features(model: nn.Module) -> tuple[int, ...]:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (m.in_channels,)
        if isinstance(m, nn.Linear):
            return (m.in_features,)
    raise SqueezeError(f"model {type(model).__name__} has no convolution or linear layer to compress.")


def probe_input(model: nn.Module, *, sizes: Sequence[int] = PROBE_SIZES) -> torch.Tensor:
    """A one-sample input that ``model`` runs on: its first layer's channels, the first size that works."""
    shape = _in_features(model)
    first = next(m for m in model.modules() if isinstance(m, _ROOTS))
    if isinstance(first, nn.Linear):
        return torch.zeros(1, *shape)
    errors = []
    was_training = model.training
    model.eval()
    try:
        for size in sizes:
            x = torch.zeros(1, shape[0], size, size)
            try:
                with torch.no_grad():
                    model(x)
                return x
            except Exception as exc:  # noqa: BLE001 - any failure means "not this size"
                errors.append(f"{size}x{size}: {type(exc).__name__}")
    finally:
        model.train(was_training)
    raise SqueezeError(
        f"model {type(model).__name__} runs on none of the probe inputs ({', '.join(errors)}); layer discovery "
        f"needs a model that takes (N, {shape[0]}, H, W) images of one of these sizes."
    )


def classifier_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The last convolution or linear layer that a forward pass runs: its outputs are the logits."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in model.modules() if isinstance(m, _ROOTS)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def discover(model: nn.Module, *, example: torch.Tensor | None = None, key: Hashable | None = None) -> tuple[Group, ...]:
    """The prunable groups of ``model``, in module order of their leaders.

    ``key`` (from :func:`topology_key`) caches the answer for models known to share a graph;
    without it the graph is traced every time.
    """
    if key is not None:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        try:
            x = probe_input(model) if example is None else example[:1].detach().clone()
        except SqueezeError as exc:
            raise GraphError(str(exc).rstrip(".")) from None
        ignored = classifier_layers(model, x)
        try:
            # Torch-Pruning traces through autograd, so it must work inside a caller's no_grad too. It warns
            # about every parameter it does not know (a layer scale, an attention bias): `squeeze check` says what matters.
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings(), memory_cap(model):
                warnings.simplefilter("ignore")
                graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
                all_groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOTS))
        except Exception as exc:  # noqa: BLE001 - the tracer fails in many ways on networks it does not know
            raise GraphError(f"Torch-Pruning cannot build the dependency graph: {one_line(exc)}") from exc
        modules = dict(model.named_modules())
        names = {m: n for n, m in modules.items()}
        order = {n: i for i, n in enumerate(modules)}
        groups = []
        for group in all_groups:
            members = {
                names[dep.target.module]
                for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
            }
            roots = sorted((n for n in members if isinstance(modules[n], _ROOTS)), key=order.__getitem__)
            if roots:
                groups.append(Group(leader=roots[0], members=tuple(sorted(members, key=order.__getitem__))))
    finally:
        model.train(was_training)
    result = tuple(sorted(groups, key=lambda g: order[g.leader]))
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return result


def one_line(exc: BaseException, *, limit: int = 200) -> str:
    """``Type: message``, the message's first non-empty line, cut at ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def group_channels(model: nn.Module, groups: Sequence[Group]) -> dict[str, int]:
    """Output channels of each group's leader in ``model``."""
    modules = dict(model.named_modules())
    return {g.leader: int(modules[g.leader].weight.shape[0]) for g in groups}
