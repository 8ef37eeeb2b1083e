"""Before a search: which groups of a teacher can be pruned, which layers quantized, which students built.

An attempt (:func:`try_plan`) takes one plan through the steps a trial takes, without training or measuring
anything: ``build`` the student from the teacher's weights; ``prune``: the study's NNI pruner
chooses channels and Torch-Pruning removes them; ``run`` the network forward and backward, as
distillation does; ``fold`` batch norm; ``quantize``: the study's NNI quantizer sets weight scales
(one step); ``materialize`` the artifact for the study's runtime; ``load`` it back from its bytes
and run it. The first step that raises is the attempt's failure, with the library's message.

:func:`check_teacher` first takes out, without an attempt, the layers no quantizer can reach
(:func:`unquantizable`), then attempts, in order:

1. the teacher with every prunable group at the space's largest sparsity and every quantizable layer at
   its smallest integer bit-width, all at once; when that works, so does every part of it. Otherwise:
2. the teacher as it is: when it does not materialize, nothing can be searched;
3. the groups at the largest sparsity, and the layers at the smallest integer bit-width, each kind alone;
4. the layers that work at 16 bits, when the space has them;
5. each student knob at its extremes: all knobs at their smallest choice in one student, then all at
   their largest (the choices in between are not tried).

When a set of parts fails, it is halved until each failing part is found (:func:`isolate`), so a
network where everything works costs one attempt per kind of part, and one with a few bad parts a few
attempts per bad part. Everything here is deterministic for a given
teacher: the pruner and quantizer read its weights and a fixed slice of the training split.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from squeeze.spaces import (
    ALL_PRUNING,
    CompressionPlan,
    GraphError,
    JointSpace,
    Removal,
    SparsityRange,
    SqueezeError,
    discover,
    one_line,
    runs_int8,
)

from ._compress import CompressSpec, channel_keep, quantizer_refuses, weight_scales
from ._evaluate import _arch, _io
from ._artifact import encode
from ._materialize import calibrate, fold_batchnorm, out_channels, remove_channels
from ._memory import free_models
from ._onnx import writer
from ._ort import deploy
from ._task_registry import TaskData
from ._train import batches, init_from_teacher

SAMPLES = 8
"""Training images an attempt runs on and calibrates with: enough to exercise every step, not to judge."""


@dataclass(frozen=True)
class StepFailure:
    """Where an attempt stopped: the step, and the library's message in one line."""

    step: str
    reason: str


class _Failed(Exception):
    def __init__(self, failure: StepFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except _Failed:
        raise
    except Exception as exc:  # noqa: BLE001 - any library's failure at this step is this step's failure
        # Decoding wraps what went wrong in a sentence about the file; the library's own message says more.
        cause = exc.__context__ if isinstance(exc, SqueezeError) and exc.__context__ is not None else exc
        raise _Failed(StepFailure(name, one_line(cause, limit=240))) from exc


def _logits(out: object, *, n: int, num_classes: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the network gives {shape}, not logits of shape ({n}, {num_classes})")
    return out


def try_plan(
    plan: CompressionPlan, *, teacher: nn.Module, space: JointSpace, data: TaskData, compress: CompressSpec,
    runtime: str = "torch",
) -> StepFailure | None:
    """Take ``plan`` through a trial's steps once, untrained; the first failure, or None when every step works."""
    try:
        return _attempt(plan, teacher=teacher, space=space, data=data, compress=compress, runtime=runtime)
    finally:
        free_models()  # here, once the attempt's own frame (and every model it held) is gone


def _attempt(
    plan: CompressionPlan, *, teacher: nn.Module, space: JointSpace, data: TaskData, compress: CompressSpec,
    runtime: str,
) -> StepFailure | None:
    family, options = space.family, space.options
    x, y = data.x_train[:SAMPLES], data.y_train[:SAMPLES]
    example, n, classes = x[:1], min(2, len(x)), data.num_classes

    def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        # Finite whatever the weights: an attempt asks whether each step runs, not whether training converges.
        return torch.nan_to_num(F.cross_entropy(model(xb), yb), nan=0.0, posinf=0.0, neginf=0.0)

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(x, y, batch_size=n, seed=0)

    try:
        with _step("build"):
            if plan.student:
                model = family.build(options, in_channels=data.in_channels, num_classes=classes, student=plan.student)
                init_from_teacher(model, teacher)
            else:
                model = copy.deepcopy(teacher)  # what a build and the teacher's weights give, for less
        with _step("prune"):
            # The teacher's groups keep their leaders when pruned: tracing the graph again (slow on large
            # networks) is needed only for a student's.
            leaders = family.prunable(model) if plan.student else list(space.prunable)
            keep = channel_keep(model, dict(plan.sparsity), method=compress.pruner, round_to=compress.round_channels,
                                step=loss, data=stream, example=example)
            remove_channels(model, keep, example=example)
        with _step("run"):
            model.train()
            _logits(model(x[:n]), n=n, num_classes=classes).float().sum().backward()
            model.zero_grad(set_to_none=True)
            model.eval()
        with _step("fold"):
            folded = fold_batchnorm(model)
        with _step("quantize"):
            scales = weight_scales(folded, dict(plan.bits), method=compress.quantizer, steps=1, step=loss,
                                   data=stream, lr=0.0, example=example)
            folded.eval()
        with _step("materialize"):
            if runtime == "onnxruntime":
                blob = writer(folded, plan=plan, scales=scales, calibration=x, example=example, io=_io(data))()
            else:
                arch = _arch(plan, family=family, options=options, data=data,
                             channels=out_channels(model, leaders))
                activations = calibrate(folded, dict(plan.bits), scales, example=example, calibration=x)
                blob = encode(folded, arch=arch, plan=plan, scales=scales, activations=activations)
        with _step("load"):
            deployed = deploy(blob, runtime=runtime, family=family)
            with torch.no_grad():
                _logits(deployed(x[:n]), n=n, num_classes=classes)
    except _Failed as failed:
        return failed.failure
    return None


def unquantizable(teacher: nn.Module, layers: Sequence[str], *, example: torch.Tensor) -> dict[str, StepFailure]:
    """The layers no quantizer can reach, known without an attempt, each with why.

    Two kinds: a module class the quantizer has no setting for (its registry says so), and a layer
    whose own forward never runs because the network reads its weight directly (Swin's attention
    calls ``F.linear`` on ``qkv.weight``): a quantizer sees a layer only through its forward, as
    calibration does. The teacher runs once, in eval mode, as a deployed model does (when it does not
    run, every layer counts as reached: the teacher's own attempt says why).
    """
    refused = {name: StepFailure("quantize", reason) for name, reason in quantizer_refuses(teacher, layers).items()}
    reached: set[str] = set()
    hooks = [teacher.get_submodule(name).register_forward_hook(lambda *_, name=name: reached.add(name))
             for name in layers if name not in refused]
    training = teacher.training
    try:
        teacher.eval()
        with torch.no_grad():
            teacher(example)
    except Exception:  # noqa: BLE001 - the teacher's own attempt reports why it does not run
        reached.update(layers)
    finally:
        for hook in hooks:
            hook.remove()
        teacher.train(training)
    unreached = StepFailure("quantize", "its forward never runs (the network reads its weight directly), "
                                        "so no quantizer can see it")
    return refused | {name: unreached for name in layers if name not in refused and name not in reached}


def isolate(parts: Sequence[str], attempt_parts: Callable[[list[str]], StepFailure | None]) -> tuple[list[str], dict[str, StepFailure]]:
    """The parts that work together, and each part taken out with its failure.

    Parts are added in order, a chunk at a time, to those already kept: a chunk that works with
    them is kept whole; one that does not is halved, down to the single parts that do not. So a
    network where everything works costs one attempt, and each bad part about two per halving. A part
    that works alone but not with those kept before it (the int8 conversion of two adjacent layers,
    say) is taken out too, and its reason says so.
    """
    kept: list[str] = []
    failed: dict[str, StepFailure] = {}

    def add(chunk: list[str]) -> None:
        failure = attempt_parts([*kept, *chunk])
        if failure is None:
            kept.extend(chunk)
        elif len(chunk) == 1:
            failed[chunk[0]] = failure
        else:
            half = len(chunk) // 2
            add(chunk[:half])
            add(chunk[half:])

    if parts:
        add(list(parts))
    for part, failure in list(failed.items()):
        if kept and attempt_parts([part]) is None:
            failed[part] = StepFailure(failure.step, f"only with the parts kept before it: {failure.reason}")
    return kept, failed


@dataclass(frozen=True)
class CheckReport:
    """What the check found: the parts it tried, what works, and each part it took out (with why)."""

    removals: tuple[Removal, ...]
    groups: int
    """Prunable groups found on the teacher (0 when the dependency graph cannot be built)."""
    groups_pruned: int
    layers: int
    layers_quantized: int
    """Quantizable layers, and those that materialize at the space's integer bit-widths."""
    students: int
    students_built: int
    """Student knob choices tried (one knob at a time), and those that build and materialize."""
    attempts: int
    seconds: float
    teacher: StepFailure | None = None
    """Why the teacher itself does not materialize (then nothing can be searched)."""


def _largest_sparsity(space: JointSpace) -> float:
    s = space.spec.sparsity
    return float(s.high) if isinstance(s, SparsityRange) else float(max(s))


def check_teacher(
    teacher: nn.Module, *, space: JointSpace, data: TaskData, compress: CompressSpec, runtime: str = "torch",
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Attempt the teacher, its prunable groups, its quantizable layers and its student knobs' extremes.

    ``space`` is the study's whole space (not narrowed). Returns what works and a :class:`Removal`
    for each part that does not. ``progress(part)`` is called before every attempt.
    """
    started = time.perf_counter()
    count = 0

    def run(plan: CompressionPlan, what: str) -> StepFailure | None:
        nonlocal count
        count += 1
        if progress:
            progress(what)
        return try_plan(plan, teacher=teacher, space=space, data=data, compress=compress, runtime=runtime)

    def report(removals: list[Removal], **found: int) -> CheckReport:
        counts = {"groups": 0, "groups_pruned": 0, "layers": 0, "layers_quantized": 0, "students": 0,
                  "students_built": 0} | found
        return CheckReport(removals=tuple(removals), attempts=count, seconds=round(time.perf_counter() - started, 2),
                           **counts)

    largest = _largest_sparsity(space)
    groups = list(space.prunable) if space.spec.prune and largest > 0 else []
    int_bits = min((b for b in space.spec.bits if runs_int8(b)), default=None)
    quantized_at = [b for b in (int_bits, 16) if b is not None and b in space.spec.bits]
    layers = list(space.quantizable) if quantized_at else []
    found_layers = len(layers)
    removals: list[Removal] = []
    if space.spec.prune and largest > 0 and not groups:
        # A user's family remembers why its graph failed; tracing it again can take a minute (Swin).
        known = getattr(space.family, "graph_error", None)
        reason = known(teacher) if callable(known) else None
        if reason is None:
            try:
                discover(teacher)
            except GraphError as exc:
                reason = str(exc)
        if reason is not None:
            removals.append(Removal(ALL_PRUNING, "graph", reason))

    def quantized(part: list[str], bits: int) -> StepFailure | None:
        return run(CompressionPlan(bits=dict.fromkeys(part, bits)), f"quantizing {len(part)} layer(s) at {bits} bits")

    # Layers no integer quantizer can reach, known without an attempt (the halving below would spend
    # about two attempts a halving on each, and some networks have dozens).
    if layers and int_bits is not None:
        unreachable = unquantizable(teacher, layers, example=data.x_train[:1])
        removals += [Removal(f"bits.{layer}", f.step, f.reason) for layer, f in unreachable.items()]
        layers = [layer for layer in layers if layer not in unreachable]

    # Everything at once first: on a network where it all works, one attempt covers the teacher, every
    # group and every layer at the integer width. Otherwise the teacher alone, then each kind of part.
    good_groups, good_layers = groups, layers
    first = dict.fromkeys(layers, int_bits) if int_bits is not None else {}
    whole = run(CompressionPlan(sparsity=dict.fromkeys(groups, largest), bits=first), "the teacher, every part at once")
    if whole is not None:
        failure = run(CompressionPlan(), "the teacher") if groups or first else whole
        if failure is not None:
            return CheckReport((), 0, 0, 0, 0, 0, 0, count, round(time.perf_counter() - started, 2), teacher=failure)
        good_groups, failed = isolate(groups, lambda part: run(CompressionPlan(sparsity=dict.fromkeys(part, largest)),
                                                               f"pruning {len(part)} group(s)"))
        removals += [Removal(f"sparsity.{g}", f.step, f.reason) for g, f in failed.items()]
        if first:
            good_layers, failed = isolate(layers, lambda part: quantized(part, int_bits))
            removals += [Removal(f"bits.{layer}", f.step, f"at {int_bits} bits: {f.reason}") for layer, f in failed.items()]
    if 16 in quantized_at:
        good_layers, failed = isolate(good_layers, lambda part: quantized(part, 16))
        removals += [Removal(f"bits.{layer}", f.step, f"at 16 bits: {f.reason}") for layer, f in failed.items()]

    # Each knob at its extremes: all knobs at their smallest choice in one student, then all at their largest.
    students = built = 0
    knobs = {f"student.{k.kind}.{k.key}": k for k in space.knobs}
    for end in (min, max):
        choices = {name: _extreme(k.choices, end) for name, k in knobs.items()}
        if end is max:
            choices = {name: c for name, c in choices.items() if c != _extreme(knobs[name].choices, min)}

        def student(part: list[str], choices: dict[str, Any] = choices) -> StepFailure | None:
            plan: dict[str, dict[str, Any]] = {}
            for name in part:
                plan.setdefault(knobs[name].kind, {})[knobs[name].key] = choices[name]
            return run(CompressionPlan(student=plan), f"{len(part)} student knob(s) at their {end.__name__}")

        good, failed = isolate(list(choices), student)
        students, built = students + len(choices), built + len(good)
        removals += [Removal(name, f.step, f.reason, choice=choices[name]) for name, f in failed.items()]
    return report(removals, students=students, students_built=built, groups=len(groups), groups_pruned=len(good_groups),
                  layers=found_layers, layers_quantized=len(good_layers))


def _extreme(choices: Sequence[Any], end: Callable[..., Any]) -> Any:
    """The smallest (``min``) or largest (``max``) of ``choices``; the first or last when they do not compare."""
    try:
        return end(choices)
    except TypeError:
        return choices[0] if end is min else choices[-1]
