"""Size and accuracy truth: every front member of a real MNIST study, checked against its exported file.

Runs a small study on the MNIST folder (the t10k IDX files; ``--data``), exports the Pareto front
with the library's own export, and for each exported artifact checks:

- size: the trial's size value equals the file's byte count exactly, and that count is at most
  1.05 x the floor. The floor is recounted here from the *loaded module's own tensors*, not from the
  encoder's bookkeeping: every int8-kernel layer's weights at the plan's bits / 8 (its weight zero
  points must all be 0, so they cost nothing), 4 bytes per weight scale, 4 per float bias, 5 per
  activation quantize point (a float32 scale and a byte zero point: one per quantized layer's output
  and one per ``quantize_per_tensor``), 4 (2 at 16 bits) per parameter of a float layer, plus the
  arch, plan and card as compact JSON. The library's :func:`size_floor` is printed beside it;
- accuracy: the file, loaded in a fresh Python process, scores within 0.5 points of the trial's
  recorded held-out accuracy, on the same held-out split.

    python benchmarks/truth.py --data ../shared/data/mnist --trials 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import torch
from torch import nn

from squeeze.objectives import load_artifact
from squeeze.search import load_spec
from squeeze.search import export_front, run

SIZE_SLACK = 1.05
ACCURACY_POINTS = 0.5

STUDY = """
[study]
name = "mnist-truth"
storage = "sqlite:///{db}"
trials = {trials}
sampler = "auto"
seed = 0
snapshot_every = 4
references = true

[task]
dataset = "mnist"
family = "cnn"
holdout = 0.2
options = {{ limit = {limit} }}

[task.model]
widths = [16, 32, 64]
depths = [1, 2, 1]

[space]
sparsity = [0.0, 0.25, 0.5, 0.75]
bits = [2, 4, 8, 16, 32]
width = [0.5, 0.75, 1.0]
depth = true

[training]
teacher_epochs = {epochs}
distill_steps = 80
finetune_steps = 40
qat_steps = 30
batch_size = 64

[latency]
batch = 1
threads = 1
repeats = 20
"""

# Loads each artifact in a new interpreter and scores it on the study's held-out split.
CHILD = textwrap.dedent(
    """
    import json, sys
    from squeeze.objectives import accuracy, load_artifact, load_task
    args = json.loads(sys.argv[1])
    data = load_task("mnist", options=args["options"], seed=args["seed"], holdout=args["holdout"], data_dir=args["data"])
    out = {}
    for path in args["files"]:
        loaded = load_artifact(path)
        out[path] = accuracy(loaded.module, data.x_holdout, data.y_holdout)
    print(json.dumps(out))
    """
)


def _compact(value: object) -> int:
    return len(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def module_floor(loaded) -> float:
    """The floor, recounted from the tensors the loaded module actually holds (see the module doc)."""
    bits = dict(loaded.plan.bits)
    total = 0.0
    quantized_modules = 0
    for name, m in loaded.module.named_modules():
        weight = getattr(m, "weight", None)
        if callable(weight) and hasattr(m, "scale"):  # an int8-kernel conv or linear (packed weights)
            w = weight()
            if not bool((w.q_per_channel_zero_points() == 0).all()):
                raise AssertionError(f"{name}: weight zero points are not all 0")
            total += w.numel() * bits[name] / 8 + 4 * w.q_per_channel_scales().numel()
            bias = m.bias()
            total += 4 * (bias.numel() if bias is not None else 0)
            quantized_modules += 1
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            per = 2 if bits.get(name, 32) == 16 else 4
            total += per * sum(p.numel() for p in m.parameters())
    graph = getattr(loaded.module, "graph", None)
    quantize_nodes = sum(1 for n in graph.nodes if n.target is torch.quantize_per_tensor) if graph is not None else 0
    total += 5 * (quantized_modules + quantize_nodes)
    total += _compact(loaded.arch.to_dict()) + _compact(loaded.plan.to_dict()) + _compact(loaded.card)
    return total


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(repo.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--limit", type=int, default=4000, help="training images (of the 8,000 training part)")
    parser.add_argument("--epochs", type=int, default=5, help="teacher epochs")
    parser.add_argument("--work", default=None, help="folder for the database and exports (default: a temporary one)")
    args = parser.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="squeeze-truth-"))
    work.mkdir(parents=True, exist_ok=True)
    study_file = work / "mnist-truth.toml"
    study_file.write_text(STUDY.format(db=(work / "truth.db").resolve(), trials=args.trials, limit=args.limit, epochs=args.epochs))
    spec = load_spec(study_file, data=str(Path(args.data).resolve()))
    started = time.perf_counter()
    run(spec, log=lambda line: print(f"# {line}", flush=True))
    search_s = time.perf_counter() - started

    paths = export_front(spec, out_dir=work / "front")
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    child_args = {"options": dict(spec.task.options), "seed": spec.study.seed, "holdout": spec.task.holdout,
                  "data": spec.task.data, "files": [str(p) for p in paths]}
    fresh = json.loads(subprocess.run([sys.executable, "-c", CHILD, json.dumps(child_args)], check=True,
                                      capture_output=True, text=True, timeout=1800).stdout.strip().splitlines()[-1])

    print(f"\nstudy {spec.study.name!r}: {len(trials)} trials in {search_s:.0f} s, front of {len(paths)}, "
          f"MNIST t10k (training limit {args.limit}, held-out {spec.task.holdout:g}), torch {torch.__version__}")
    print("\n| trial | plan (mean bits, mean sparsity) | size value | file bytes | floor (recount) | size_floor | "
          "bytes/floor | trial accuracy | fresh-process accuracy | diff (points) | ok |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    failures = 0
    for path in paths:
        number = int(path.stem.split("-")[1])
        trial = trials[number]
        loaded = load_artifact(path)
        size_value = trial.values[1]
        nbytes = path.stat().st_size
        floor = module_floor(loaded)
        acc_trial, acc_fresh = trial.values[0], fresh[str(path)]
        diff = abs(acc_fresh - acc_trial) * 100
        ok = size_value == nbytes and nbytes <= SIZE_SLACK * floor and diff <= ACCURACY_POINTS
        failures += not ok
        print(f"| {number} | {loaded.plan.mean_bits():.1f} b, {loaded.plan.mean_sparsity():.2f} | {size_value:.0f} | {nbytes} | "
              f"{floor:.1f} | {loaded.floor_bytes:.1f} | {nbytes / floor:.4f} | {acc_trial:.4f} | {acc_fresh:.4f} | "
              f"{diff:.2f} | {'yes' if ok else 'NO'} |")
    print(f"\n{len(paths) - failures} of {len(paths)} front members hold: size value == file bytes, "
          f"bytes <= {SIZE_SLACK} x floor, fresh-process accuracy within {ACCURACY_POINTS} points.")
    print(f"work folder: {work}")
    return 1 if failures or not paths else 0


if __name__ == "__main__":
    sys.exit(main())
