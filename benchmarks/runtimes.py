"""Runtimes side by side: torch eager, torch.ao int8 (``SQZ1``) and ONNX Runtime, on the same plans, in one process.

Four networks on 28x28 MNIST inputs: ``cnn`` 16-32-64 and 64-128-256 (depths 1-2-1), trained on the
real MNIST files, and ``resnet18`` at half width and ``mobilenet_v2`` with random weights (their
accuracy is not reported: they are not trained). For each, four plans: the teacher (nothing
compressed), uniform 8-bit, uniform 4-bit, and 50% of every pruned layer's channels removed at 8
bits. Each compressed plan goes through the trial pipeline once (:func:`evaluate` in the
``onnxruntime`` runtime: NNI masks and channel removal, distillation, fine-tuning, NNI QAT,
calibration, the stored ONNX model), and its ``torch`` artifact (``SQZ1``, torch.ao int8) is built
from the very same weights and scales, read back from the ONNX model and calibrated on the same
batches as a ``torch`` trial would be (training once halves the benchmark's time, and the two
runtimes then run the same candidate). Then every artifact is timed with the search's latency protocol
(:func:`measure`: interleaved rounds, lower deciles, one thread) against two baselines, at batch 1
and batch 32:

- the torch eager float teacher (batch norm not folded: the model as a user trains it), the same
  baseline for every runtime, so the runtimes can be compared;
- its own runtime's teacher artifact (what a study of that runtime calls the latency ratio).

Each ratio (candidate time / baseline time, below 1 is faster) is the median of ``--rounds``
measurements. Bytes are the stored artifact's (the size objective); accuracy is on the validation
split, in the artifact's own runtime. The targets for the 8-bit and 4-bit plans are checked at the end.

    nohup python benchmarks/runtimes.py --data ../shared/data/mnist > benchmarks/results/runtimes-<cpu>.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from squeeze.objectives import (
    CALIBRATION_SAMPLES,
    Arch,
    CompressSpec,
    LatencySpec,
    TrainingBudget,
    accuracy,
    calibrate,
    cpu_model,
    deploy,
    encode,
    evaluate,
    load_task,
    measure,
    teacher_artifact,
    train_teacher,
)
from squeeze.spaces import CompressionPlan, get_family

MODELS = {
    "cnn 64-128-256": ("cnn", {"widths": [64, 128, 256], "depths": [1, 2, 1]}, True),
    "cnn 16-32-64": ("cnn", {"widths": [16, 32, 64], "depths": [1, 2, 1]}, True),
    "resnet18, half width": ("resnet18", {"widths": [32, 64, 128, 256]}, False),
    "mobilenet_v2": ("mobilenet_v2", {}, False),
}
RUNTIMES = ("torch", "onnxruntime")
BATCHES = (1, 32)
ACCEPTANCE_MODEL = "cnn 64-128-256"
SEED = 1


def _plans(family, teacher) -> dict[str, CompressionPlan]:
    layers = family.quantizable(teacher)
    return {
        "teacher": CompressionPlan(),
        "uniform 8-bit": CompressionPlan(bits={n: 8 for n in layers}),
        "uniform 4-bit": CompressionPlan(bits={n: 4 for n in layers}),
        "50% pruned, 8-bit": CompressionPlan(sparsity={n: 0.5 for n in family.prunable(teacher)},
                                             bits={n: 8 for n in layers}),
    }


def _torch_twin(blob: bytes, plan: CompressionPlan, *, family, options, data, seed: int) -> bytes:
    """The ``SQZ1`` artifact of the candidate in ONNX model ``blob``: its weights and NNI scales, calibrated as a trial is."""
    model = onnx.load_from_string(blob)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def value(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """An initializer as float, through its Cast and DequantizeLinear; and the scale it was dequantized with."""
        array, scale = inits[name].astype(np.float32), None
        for node in readers.get(name, []):
            if node.op_type == "Cast" and node.output[0] in readers:
                node = readers[node.output[0]][0]
            if node.op_type == "DequantizeLinear":
                scale = inits[node.input[1]].astype(np.float32)
                array = array * scale.reshape(-1, *[1] * (array.ndim - 1))
        return array, scale

    teacher = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes, student=plan.student or None)
    channels = {name: int(value(f"{name}.weight")[0].shape[0]) for name in family.prunable(teacher)}
    arch = Arch(family=family.name, options=dict(options), student={k: dict(v) for k, v in plan.student.items()},
                in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size, channels=channels)
    folded = arch.rebuild_float(family=family)
    # A parameter the exporter dropped (an all-zero bias) is zero.
    state = {key: torch.from_numpy(value(key)[0]).reshape(t.shape) if key in inits else torch.zeros_like(t)
             for key, t in folded.state_dict().items()}
    folded.load_state_dict(state)
    scales = {name: torch.from_numpy(value(f"{name}.weight")[1]) for name, b in plan.bits.items() if b <= 8}
    gen = torch.Generator().manual_seed(seed + 3)  # the calibration batches evaluate() draws
    calib = data.x_train[torch.randperm(len(data.x_train), generator=gen)[:CALIBRATION_SAMPLES]]
    activations = calibrate(folded, dict(plan.bits), scales, example=data.x_train[:1], calibration=calib)
    card = {"accuracy": 0.0, "latency_ratio": 0.0, "latency_ms": 0.0, "latency_iqr": 0.0, "threads": 1, "batch": 1,
            "cpu": cpu_model(), "torch": torch.__version__}  # a trial's card, its figures stand-ins of similar length
    return encode(folded, arch=arch, plan=plan, scales=scales, activations=activations, card=card)


def _median_ratio(candidate, baseline, example, *, batch: int, args) -> float:
    spec = LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats)
    return statistics.median(measure(candidate, baseline, example, spec=spec).ratio for _ in range(args.rounds))


def run_model(label: str, data, args) -> tuple[list[dict], dict]:
    family_name, raw, trained = MODELS[label]
    family = get_family(family_name)
    options = family.check_options(raw)
    torch.manual_seed(0)
    teacher = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes)
    started = time.perf_counter()
    if trained:
        train_teacher(teacher, data.x_train, data.y_train, budget=TrainingBudget(teacher_epochs=args.epochs), seed=0)
        budget = TrainingBudget(teacher_epochs=0, distill_steps=args.distill, finetune_steps=args.finetune,
                                qat_steps=args.qat, batch_size=64)
        compress = CompressSpec()
    else:
        budget = TrainingBudget(teacher_epochs=0, distill_steps=0, finetune_steps=0, qat_steps=0)
        compress = CompressSpec(quantizer="ptq")  # random weights: post-training scales, nothing to train
    teacher.eval()
    print(f"# {label}: teacher ready in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    own = {}
    for runtime in RUNTIMES:
        blob = teacher_artifact(teacher, family=family, options=options, data=data, runtime=runtime)
        own[runtime] = deploy(blob, runtime=runtime, family=family, threads=args.threads)
    # evaluate()'s own timing is not used here: every artifact is timed below, against both baselines.
    quick = LatencySpec(repeats=1, warmup=0, min_round_ms=0.1, threads=args.threads, runtime="onnxruntime")
    rows = []
    for name, plan in _plans(family, teacher).items():
        row = {"plan": name}
        blobs = {}
        if name == "teacher":
            blobs = {runtime: teacher_artifact(teacher, family=family, options=options, data=data, runtime=runtime)
                     for runtime in RUNTIMES}
        else:
            t0 = time.perf_counter()
            judged = evaluate(plan, teacher=teacher, teacher_deployed=own["onnxruntime"], family=family, options=options,
                              data=data, budget=budget, compress=compress, latency=quick, seed=SEED)
            blobs["onnxruntime"] = judged.artifact
            blobs["torch"] = _torch_twin(judged.artifact, plan, family=family, options=options, data=data, seed=SEED)
            print(f"# {label}, {name}: trained and built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for runtime in RUNTIMES:
            blob = blobs[runtime]
            model = deploy(blob, runtime=runtime, family=family, threads=args.threads)
            acc = accuracy(model, data.x_holdout, data.y_holdout)
            print(f"# {label}, {name}, {runtime}: {len(blob)} bytes, accuracy {acc:.4f}", file=sys.stderr, flush=True)
            row[runtime] = {"bytes": len(blob), "accuracy": acc if trained else None}
            for batch in BATCHES:
                row[runtime][batch] = {
                    "eager": _median_ratio(model, teacher, data.x_train[:1], batch=batch, args=args),
                    "own": _median_ratio(model, own[runtime], data.x_train[:1], batch=batch, args=args),
                }
        rows.append(row)
    eager_ms = {}
    for batch in BATCHES:
        lat = measure(teacher, teacher, data.x_train[:1], spec=LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats))
        eager_ms[batch] = lat.teacher_ms
    return rows, eager_ms


def _acc(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def print_model(label: str, rows: list[dict], eager_ms: dict) -> None:
    family_name, raw, trained = MODELS[label]
    print(f"\n### {label} ({family_name} {raw or 'defaults'}, 1x28x28{'' if trained else ', random weights'})\n")
    print("Time ratios (candidate / baseline; below 1 is faster). `eager`: the torch eager float teacher "
          f"({', '.join(f'{eager_ms[b]:.3f} ms at batch {b}' for b in BATCHES)}); `own`: the same runtime's teacher artifact.\n")
    head = "| plan | torch.ao bytes | ORT bytes | torch.ao acc % | ORT acc % |"
    sep = "|---|---:|---:|---:|---:|"
    for batch in BATCHES:
        head += f" b{batch} torch.ao/eager | b{batch} ORT/eager | b{batch} torch.ao/own | b{batch} ORT/own |"
        sep += "---:|---:|---:|---:|"
    print(head)
    print(sep)
    for row in rows:
        t, o = row["torch"], row["onnxruntime"]
        line = f"| {row['plan']} | {t['bytes']:,} | {o['bytes']:,} | {_acc(t['accuracy'])} | {_acc(o['accuracy'])} |"
        for batch in BATCHES:
            line += (f" {t[batch]['eager']:.3f}x | {o[batch]['eager']:.3f}x | {t[batch]['own']:.3f}x | "
                     f"{o[batch]['own']:.3f}x |")
        print(line, flush=True)


def acceptance(rows: list[dict]) -> bool:
    """Issue 26's acceptance on the 64-128-256 CNN: 8-bit ORT vs ORT teacher speed-up, accuracy, 4-bit bytes."""
    by = {row["plan"]: row["onnxruntime"] for row in rows}
    eight, four, teacher = by["uniform 8-bit"], by["uniform 4-bit"], by["teacher"]
    checks = [
        (f"8-bit ORT speed-up over the ORT teacher, batch 1: {1 / eight[1]['own']:.2f}x", 1 / eight[1]["own"] >= 1.7, ">= 1.7x"),
        (f"8-bit ORT speed-up over the ORT teacher, batch 32: {1 / eight[32]['own']:.2f}x", 1 / eight[32]["own"] >= 1.5, ">= 1.5x"),
        (f"8-bit ORT accuracy {_acc(eight['accuracy'])} vs teacher {_acc(teacher['accuracy'])}",
         abs(eight["accuracy"] - teacher["accuracy"]) <= 0.003, "within 0.3 point"),
        (f"4-bit ORT file / 8-bit ORT file: {four['bytes'] / eight['bytes']:.3f}", four["bytes"] / eight["bytes"] <= 0.6, "<= 0.6"),
    ]
    print(f"\n### Acceptance ({ACCEPTANCE_MODEL})\n")
    print("| check | target | met |\n|---|---|---|")
    for text, ok, target in checks:
        print(f"| {text} | {target} | {'yes' if ok else 'NO'} |")
    return all(ok for _, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per ratio (the median is reported)")
    parser.add_argument("--epochs", type=int, default=5, help="teacher epochs (trained models)")
    parser.add_argument("--distill", type=int, default=150)
    parser.add_argument("--finetune", type=int, default=60)
    parser.add_argument("--qat", type=int, default=60)
    args = parser.parse_args(argv)

    torch.set_num_threads(2)  # training; every measurement sets its own thread count
    data = load_task("mnist", options={}, seed=0, holdout=0.2, data_dir=args.data)
    import onnxruntime

    print(f"## Runtimes on {cpu_model()} ({platform.machine()}), {args.threads} thread(s)\n")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; MNIST from `{args.data}`: "
          f"{len(data.x_train)} training, {len(data.x_holdout)} validation images; teacher {args.epochs} epochs; "
          f"plans: distil {args.distill}, fine-tune {args.finetune}, QAT {args.qat} steps; "
          f"{args.repeats} rounds a measurement, median of {args.rounds}.")
    print(f"\n    python benchmarks/runtimes.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    ok = True
    for label in args.models:
        rows, eager_ms = run_model(label, data, args)
        print_model(label, rows, eager_ms)
        if label == ACCEPTANCE_MODEL:
            ok &= acceptance(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
