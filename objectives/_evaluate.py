"""One candidate, end to end: prune, distil, fine-tune, quantize, materialize, measure.

Accuracy, size and latency are all taken from the artifact itself, decoded from its bytes: the
same bytes ``squeeze export`` writes, running the same integer arithmetic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from squeeze.spaces import CompressionPlan, ModelFamily

from ._artifact import Arch, encode, size_floor
from ._artifact import with_card as _sqz_with_card
from ._compress import CompressSpec, channel_keep, weight_scales
from . import _materialize
from ._latency import Latency, LatencySpec, cpu_class, measure
from ._materialize import calibrate, fold_batchnorm, out_channels, remove_channels
from ._onnx import build_model, writer
from ._onnx_file import io_card, serialize
from ._onnx_file import with_card as _onnx_with_card
from ._ort import deploy, runtime_version
from ._task_registry import TaskData
from ._train import Recipe, TrainingBudget, accuracy, batches, distil, init_from_teacher, kd_loss, training_device

CALIBRATION_SAMPLES = 512


@dataclass(frozen=True)
class Judged:
    """The three objective values of one candidate and what backs them."""

    accuracy: float
    size_bytes: int
    latency: Latency | None
    """None when the candidate was not timed here (``evaluate(..., timed=False)``): :func:`time_artifact` times it."""
    artifact: bytes
    sha256: str
    plan: CompressionPlan
    timings: Mapping[str, float] = field(default_factory=dict)
    device: str = "cpu"
    """Where distillation and fine-tuning ran (pruner masks, quantization-aware steps and every
    measurement run on the CPU: latency is measured on the CPU, the target the int8 artifact is built for)."""
    latency_key: str = ""
    """The network that runs and how it was timed (:func:`latency_key`)."""
    latency_reused: bool = False
    """True when ``latency`` is an earlier measurement of the same network, not one taken here."""
    weights: Mapping[str, int] = field(default_factory=dict)
    """Weights each layer of ``plan.bits`` keeps in the artifact: what one bit more or less on a layer costs."""


def latency_key(arch: Arch, plan: CompressionPlan, *, spec: LatencySpec, model: torch.fx.GraphModule | None = None) -> str:
    """A digest of everything a latency measurement depends on: the network that runs and how it is timed.

    Two plans with the same network (graph, layer shapes) and the same layers in int8 run the same
    kernels on the same shapes: weights below 8 bits are unpacked to int8 and 16-bit layers run in
    float, and no kernel here is faster for some weight values than for others. So bit-widths and
    weights do not enter, and neither does how the network was reached: a student at half width and
    the teacher with half of every layer's channels pruned are one network, timed once. The network,
    which layers are int8, the protocol, the CPU class that times it (``spec.target``, else this
    machine's :func:`cpu_class`), torch and the quantized engine do enter.
    ``model``, when given, is the folded float module ``arch`` describes (it is then not rebuilt).
    """
    payload = {
        "network": _network(arch, model),
        "int8": plan.int8_layers(),
        "protocol": {k: getattr(spec, k) for k in ("batch", "threads", "warmup", "repeats", "min_round_ms")},
        "cpu": spec.target or cpu_class(),
        "torch": torch.__version__,
        "engine": _materialize.ENGINE,
    }
    if spec.runtime != "torch":
        # ONNX Runtime folds the casts of int4, int2 and float16 weights at load: the same rule holds.
        payload["runtime"] = runtime_version()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _network(arch: Arch, model: torch.fx.GraphModule | None) -> dict[str, Any]:
    """The network ``arch`` builds, as its forward graph and each layer's configuration and input shape."""
    model = model if model is not None else arch.rebuild_float()
    layers = [[name, repr(m)] for name, m in model.named_modules() if next(m.children(), None) is None]
    return {"graph": model.code, "layers": layers, "input": [arch.in_channels, *arch.input_size]}


def teacher_artifact(
    teacher: nn.Module, *, family: ModelFamily, options: Mapping[str, Any], data: TaskData, card: Mapping[str, Any] | None = None,
    runtime: str = "torch",
) -> bytes:
    """The teacher as an artifact: folded float, the same format as every candidate (an ONNX model for ``onnxruntime``)."""
    plan = CompressionPlan()
    if runtime == "onnxruntime":
        model = build_model(fold_batchnorm(teacher), plan=plan, scales={}, activations={}, example=data.x_train[:1])
        return serialize(model, plan=plan, io=_io(data), card=card)
    arch = _arch(plan, family=family, options=options, data=data,
                 channels=out_channels(teacher, family.prunable(teacher)))
    return encode(fold_batchnorm(teacher), arch=arch, plan=plan, scales={}, activations={}, card=card)


def size_lower_bound(
    plan: CompressionPlan, *, family: ModelFamily, options: Mapping[str, Any], data: TaskData, compress: CompressSpec
) -> float:
    """Bytes that ``plan``'s artifact cannot go below, known before any training.

    The student is built untrained and each layer keeps the fewest channels its sparsity allows
    (the pruner removes at most ``ceil(ratio * width)``, a layer keeps one at least, and counts are
    rounded up to ``compress.round_channels``); which channels survive does not change the count.
    The bound is the artifact's floor for that architecture (:func:`size_floor`) without the card
    and the activation scales, which calibration adds later, so a real artifact is always larger.
    """
    student = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes,
                           student=plan.student or None)
    layers = family.prunable(student)
    widths = out_channels(student, layers)
    channels = {}
    for name in layers:
        total = widths[name]
        ratio = float(plan.sparsity.get(name, 0.0))
        kept = max(1, total - math.ceil(ratio * total)) if ratio > 0 else total
        channels[name] = min(total, math.ceil(kept / compress.round_channels) * compress.round_channels)
    arch = _arch(plan, family=family, options=options, data=data, channels=channels)
    return size_floor(arch=arch, plan=plan, card={}, activations=0, family=family)


def _io(data: TaskData) -> dict[str, Any]:
    """What a deployed model of ``data``'s task takes and gives, for the ONNX model's metadata."""
    return io_card(in_channels=data.in_channels, input_size=data.input_size, num_classes=data.num_classes,
                   mean=data.mean, std=data.std)


def _arch(plan: CompressionPlan, *, family: ModelFamily, options: Mapping[str, Any], data: TaskData,
          channels: Mapping[str, int]) -> Arch:
    """What rebuilds ``plan``'s student with ``channels`` kept per prunable layer."""
    return Arch(
        family=family.name,
        options=dict(options),
        student={k: dict(v) for k, v in plan.student.items()},
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        input_size=data.input_size,
        channels=channels,
    )


def evaluate(
    plan: CompressionPlan,
    *,
    teacher: nn.Module,
    teacher_deployed: nn.Module,
    family: ModelFamily,
    options: Mapping[str, Any],
    data: TaskData,
    budget: TrainingBudget,
    compress: CompressSpec,
    latency: LatencySpec,
    seed: int,
    card: Mapping[str, Any] | None = None,
    check: Callable[[str, nn.Module], None] | None = None,
    device: str = "cpu",
    known_latency: Callable[[str], Latency | None] | None = None,
    recipe: Recipe | None = None,
    split: str = "validation",
    progress: Callable[[str, int, int], None] | None = None,
    timed: bool = True,
    baseline_ms: float | None = None,
) -> Judged:
    """Build, train, compress and materialize the candidate ``plan``; measure its three objectives.

    ``teacher`` is the float teacher that students distil from; ``teacher_deployed`` is the
    teacher's own artifact, decoded, which is what latency is compared against. ``check`` is
    called after each stage with the stage's name and model (early stopping hooks in there).
    ``device`` (``cpu`` or ``cuda``) is where distillation and fine-tuning run when it is present;
    the rest runs on the CPU, and latency is measured there. ``known_latency``, given the
    network's :func:`latency_key`, returns an earlier measurement of the same network (or None):
    then that measurement is the candidate's latency and the network is not timed again, so
    networks that run the same kernels get the same figure rather than two draws of the noise.

    ``recipe`` is how the student trains (default :meth:`Recipe.proxy`, a trial's budget), and
    ``split`` the data accuracy is measured on: ``validation`` for trials, ``test`` for finished
    models only. ``progress(stage, step, steps)`` follows distillation step by step.

    ``timed=False`` leaves the latency for a machine of the study's target class: the result has no
    latency (unless ``known_latency`` had one), and its artifact's card no latency figures, until
    :func:`time_artifact` times it. ``baseline_ms`` is the teacher's quiet time on this machine's class
    (see :func:`squeeze.objectives.measure`).
    """
    if split not in ("validation", "test"):
        raise ValueError(f"`split` must be 'validation' or 'test', but got {split!r}.")
    recipe = recipe or Recipe.proxy(budget)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    torch.manual_seed(seed)
    example = data.x_train[:1]
    student = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes, student=plan.student or None)
    init_from_teacher(student, teacher)
    train_on = training_device(device)

    def step(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(xb)
        return kd_loss(model(xb), t_logits, yb, budget=budget)

    def stream():
        return batches(data.x_train, data.y_train, batch_size=budget.batch_size, seed=seed + 1)

    # Prune first, on the weights the student inherited from the teacher, so that the whole
    # distillation budget repairs what pruning removed; pruning after distillation left only the
    # fine-tune steps for that, and plans that halved every layer lost most of their accuracy.
    keep = channel_keep(
        student, dict(plan.sparsity), method=compress.pruner, round_to=compress.round_channels,
        step=step, data=stream, example=example,
    )
    remove_channels(student, keep, example=example)
    lap("prune")
    # The shared teacher stays on the CPU for the steps that run there; a copy goes to the GPU.
    teacher_on = teacher if train_on.type == "cpu" else copy.deepcopy(teacher).to(train_on)
    distil(student, teacher_on, data.x_train, data.y_train, steps=recipe.distill_steps, budget=budget, seed=seed,
           device=train_on, lr=recipe.lr, warmup=recipe.warmup_steps, augmented=recipe.augment,
           progress=(lambda i, n: progress("distil", i, n)) if progress else None)
    lap("distil")
    if check:
        check("distil", student)
    distil(student, teacher_on, data.x_train, data.y_train, steps=recipe.finetune_steps, budget=budget,
           seed=seed + 2, lr=(recipe.lr or budget.lr) / 3, stage="fine-tune", device=train_on)
    del teacher_on
    lap("finetune")

    folded = fold_batchnorm(student)
    scales = weight_scales(
        folded, dict(plan.bits), method=compress.quantizer, steps=recipe.qat_steps, step=step,
        data=stream, lr=budget.lr / 10, example=example,
    )
    folded.eval()
    lap("quantize")

    gen = torch.Generator().manual_seed(seed + 3)
    calib_idx = torch.randperm(len(data.x_train), generator=gen)[:CALIBRATION_SAMPLES]
    arch = _arch(plan, family=family, options=options, data=data,
                 channels=out_channels(student, family.prunable(student)))
    if latency.runtime == "onnxruntime":
        write = writer(folded, plan=plan, scales=scales, calibration=data.x_train[calib_idx], example=example,
                       io=_io(data))
    else:
        activations = calibrate(folded, dict(plan.bits), scales, example=example, calibration=data.x_train[calib_idx])

        def write(card: Mapping[str, Any] | None = None) -> bytes:
            return encode(folded, arch=arch, plan=plan, scales=scales, activations=activations, card=card)
    draft = write()
    deployed = deploy(draft, runtime=latency.runtime, family=family, threads=latency.threads)
    lap("materialize")

    # Trials are scored on validation; only finished models ever read the test split.
    x_eval, y_eval = (data.x_test, data.y_test) if split == "test" else (data.x_holdout, data.y_holdout)
    acc = accuracy(deployed, x_eval, y_eval)
    lap("accuracy")
    key = latency_key(arch, plan, spec=latency, model=folded)
    known = known_latency(key) if known_latency else None
    lat = known or (measure(deployed, teacher_deployed, example, spec=latency, baseline_ms=baseline_ms)
                    if timed else None)
    lap("latency")

    blob = write(card={**(card or {}), "accuracy": acc, **(latency_card(lat) if lat is not None else {})})
    return Judged(
        accuracy=acc,
        size_bytes=len(blob),
        latency=lat,
        artifact=blob,
        sha256=hashlib.sha256(blob).hexdigest(),
        plan=plan,
        timings=timings,
        device=train_on.type,
        latency_key=key,
        latency_reused=known is not None,
        weights={name: int(m.weight.numel()) for name, m in folded.named_modules()
                 if name in plan.bits and isinstance(getattr(m, "weight", None), torch.Tensor)},
    )


def latency_card(lat: Latency) -> dict[str, Any]:
    """The latency figures an artifact's card records."""
    return {
        "latency_ratio": lat.ratio,
        "latency_ms": lat.candidate_ms,
        "latency_iqr": lat.ratio_iqr,
        "threads": lat.threads,
        "batch": lat.batch,
        "cpu": lat.cpu,
        "torch": lat.torch_version,
        **({"runtime": lat.engine} if lat.runtime != "torch" else {}),
    }


def recard(blob: bytes, card: Mapping[str, Any], *, runtime: str) -> bytes:
    """``blob`` (an artifact of ``runtime``) with ``card``'s entries merged into its card; weights untouched."""
    return _onnx_with_card(blob, card) if runtime == "onnxruntime" else _sqz_with_card(blob, card)


def time_artifact(
    blob: bytes,
    *,
    teacher_deployed: nn.Module,
    example: torch.Tensor,
    latency: LatencySpec,
    family: ModelFamily | None = None,
    baseline_ms: float | None = None,
    known: Latency | None = None,
) -> tuple[Latency, bytes]:
    """Time a stored candidate against the teacher on this machine; returns the measurement and the
    artifact with its latency figures in the card (the bytes to store, ship and count as its size).

    ``known`` is an earlier measurement of the same network (then nothing is timed).
    """
    if known is None:
        deployed = deploy(blob, runtime=latency.runtime, family=family, threads=latency.threads,
                          source="the stored candidate")
        known = measure(deployed, teacher_deployed, example, spec=latency, baseline_ms=baseline_ms)
    return known, recard(blob, latency_card(known), runtime=latency.runtime)
