"""Latency truth: deployed artifacts against the float teacher, side by side, in one process.

A CNN big enough that kernels dominate (family ``cnn``, widths 64-128-256, depths 2-2-2, on 28x28
MNIST inputs) is trained briefly; then two plans go through the whole trial pipeline
(:func:`evaluate`: distil, NNI masks, channel removal, fine-tune, BN folding, NNI QAT,
calibration, artifact encode and decode) and their decoded artifacts are timed against the decoded
teacher artifact with the study's latency protocol (:func:`measure`: interleaved rounds, ratio of
lower-decile round times, interquartile range of the per-round ratios), at batch 1 and batch 32:

- ``int8``: every layer at 8 bits, nothing pruned; target at least 1.8x faster than the teacher;
- ``half-float``: every convolution keeps 50% of its channels, all left in float; target 1.6x.

The int8 artifact is also timed against the teacher run channels-last (NHWC), the fastest float
layout found for it here, so the speedup is not flattered by a weak float baseline.
``--engines`` also times the int8 artifact built for each of PyTorch's quantized CPU engines, and
``--eager`` adds the unfolded float teacher as a second baseline.

    python benchmarks/latency.py --data ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

from squeeze.objectives import (
    int8_engine,
    CompressSpec,
    LatencySpec,
    TrainingBudget,
    accuracy,
    decode,
    evaluate,
    load_task,
    measure,
    teacher_artifact,
    train_teacher,
)
from squeeze.spaces import CompressionPlan, get_family

OPTIONS = {"widths": [64, 128, 256], "depths": [2, 2, 2]}
TARGETS = {"int8": 1.8, "half-float": 1.6}
BATCHES = (1, 32)
ENGINES = ("x86", "fbgemm", "onednn")


class ChannelsLast(nn.Module):
    """A float model run in the channels-last memory layout, inputs converted on the way in."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _data(folder: str | None, limit: int):
    from squeeze.objectives import TaskData

    if folder and Path(folder).is_dir():
        return load_task("mnist", options={"limit": limit, "holdout_limit": 500}, seed=0, holdout=0.2, data_dir=folder)
    print(f"# no MNIST folder at {folder!r}: random 28x28 inputs (latency does not depend on the values)")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(limit + 1000, 1, 28, 28, generator=g), torch.randint(0, 10, (limit + 1000,), generator=g)
    return TaskData("random", x[:limit], y[:limit], x[limit:limit + 500], y[limit:limit + 500], in_channels=1,
                    num_classes=10, input_size=(28, 28), x_test=x[limit + 500:], y_test=y[limit + 500:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--limit", type=int, default=2000, help="training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8, help="distil/fine-tune/QAT steps per plan")
    parser.add_argument("--engines", action="store_true", help="also compare PyTorch's quantized engines")
    parser.add_argument("--eager", action="store_true", help="also time the unfolded float teacher")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(max(args.threads, torch.get_num_threads()))
    data = _data(args.data, args.limit)
    family = get_family("cnn")
    teacher = family.build(OPTIONS, in_channels=1, num_classes=10)
    budget = TrainingBudget(teacher_epochs=1, distill_steps=args.steps, finetune_steps=args.steps,
                            qat_steps=args.steps, batch_size=64)
    train_teacher(teacher, data.x_train, data.y_train, budget=budget, seed=0)
    teacher.eval()
    deployed = decode(teacher_artifact(teacher, family=family, options=OPTIONS, data=data)).module
    print(f"# teacher: held-out accuracy {accuracy(deployed, data.x_holdout, data.y_holdout):.4f} after one short epoch "
          "(accuracy is not what this script measures)", flush=True)
    convs = family.prunable(teacher)
    plans = {
        "int8": CompressionPlan(bits={n: 8 for n in family.quantizable(teacher)}),
        "half-float": CompressionPlan(sparsity={n: 0.5 for n in convs}),
    }
    spec = LatencySpec(threads=args.threads, repeats=args.repeats)
    artifacts = {}
    for name, plan in plans.items():
        judged = evaluate(plan, teacher=teacher, teacher_deployed=deployed, family=family, options=OPTIONS,
                               data=data, budget=budget, compress=CompressSpec(), latency=spec, seed=1)
        artifacts[name] = judged.artifact
        print(f"# {name}: {len(judged.artifact)} bytes, held-out accuracy {judged.accuracy:.4f}, "
              f"trial ratio {judged.latency.ratio:.3f} (batch {judged.latency.batch})", flush=True)

    print(f"\ncnn widths {OPTIONS['widths']} depths {OPTIONS['depths']}, 1x28x28, threads {args.threads}, "
          f"repeats {args.repeats}, torch {torch.__version__}, engine {ENGINES[0]}")
    ok = True
    rows = []
    example = data.x_train[:1]
    baselines = {"folded float teacher": deployed, "folded float teacher, channels-last": ChannelsLast(deployed)}
    for name, blob in artifacts.items():
        module = decode(blob).module
        for base, reference in baselines.items():
            if name != "int8" and base != "folded float teacher":
                continue  # a float candidate is compared in its own (default) layout
            for batch in BATCHES:
                spec = LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats)
                lat = measure(module, reference, example, spec=spec)
                passed = 1 / lat.ratio >= TARGETS[name]
                ok &= passed
                rows.append((name, base, batch, lat, f">= {TARGETS[name]}x", "yes" if passed else "NO"))
    if args.eager:
        for batch in BATCHES:
            lat = measure(deployed, teacher, example, spec=LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats))
            rows.append(("folded float teacher", "eager float teacher (BN unfolded)", batch, lat, "", ""))
    if args.engines:
        for engine in ENGINES:
            with int8_engine(engine):
                module = decode(artifacts["int8"]).module
            for batch in BATCHES:
                lat = measure(module, deployed, example, spec=LatencySpec(batch=batch, threads=args.threads, repeats=args.repeats))
                rows.append((f"int8, engine {engine}", "folded float teacher", batch, lat, "", ""))
        torch.backends.quantized.engine = ENGINES[0]
    print("\n| candidate | baseline | batch | candidate ms | baseline ms | speedup | ratio IQR | target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for name, base, batch, lat, target, met in rows:
        print(f"| {name} | {base} | {batch} | {lat.candidate_ms:.3f} | {lat.teacher_ms:.3f} | "
              f"{1 / lat.ratio:.2f}x | {lat.ratio_iqr:.3f} | {target} | {met} |")
    print(f"\ncpu: {lat.cpu}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
