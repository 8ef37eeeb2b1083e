"""Coverage: the study's check over every torchvision classification builder, and short studies over a dozen.

Each builder of ``torchvision.models.list_models(module=torchvision.models)`` becomes a user's model
family (``studies/torchvision_model.py``: random weights, the first convolution taking MNIST's one
channel, 10 classes), at the smallest input its downsampling allows (28x28 for most) and the narrowest
width its builder takes (``width_mult`` of the MobileNets; the others fix their widths). The check
(``squeeze check``) then runs on it as it would when a study is created, and the table gives: prunable
groups found, groups that prune at sparsity 0.5, layers that quantize to int8, students that build (the
MobileNets' ``width_mult`` knob at its two ends), the time, and what was taken out of the space and why, or
the one sentence that refuses the study. Every builder runs in a process of its own, under an address-space
cap and a time limit, so one that runs the machine out of memory says so in its row instead of stopping the
run; none is skipped.

``--studies`` runs, for the builders in :data:`STUDIES` (residual, grouped-convolution, depthwise,
squeeze-excitation, channel-shuffle, concatenating and transformer designs), a study of two trials with the
model as a user family, and reports the trials completed and failed and what each searched.

    python benchmarks/coverage.py --data ../shared/data/mnist [--only resnet18 ...] [--out benchmarks/results/coverage.md]
    python benchmarks/coverage.py --data ../shared/data/mnist --studies [--out benchmarks/results/coverage-studies.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAMILY = "studies.torchvision_model:make_net"

INPUT = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224}
"""Input sizes other than 28: the smallest each network's downsampling runs on (found by trying)."""
INPUT_32 = ("convnext", "densenet", "vgg", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")
KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "maxvit_t": {"input_size": [224, 224]},
    "vit_b_16": {"image_size": 32}, "vit_b_32": {"image_size": 32}, "vit_l_16": {"image_size": 32},
    "vit_l_32": {"image_size": 32}, "vit_h_14": {"image_size": 28},
}
"""Keyword arguments a builder needs to run on small inputs (aux heads off, the ViTs' image size)."""
WIDTH_KNOB = {"mobilenet_v2": "width_mult", "mobilenet_v3_large": "width_mult", "mobilenet_v3_small": "width_mult"}
"""Builders that take a width multiplier: built at 0.25, with students at 0.25 and 0.5."""

STUDIES = ("resnet18", "resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf", "mobilenet_v2", "mobilenet_v3_small",
           "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet", "densenet121",
           "convnext_tiny", "swin_t", "vit_b_32")
"""Residual, grouped convolutions, squeeze-excitation, depthwise, channel shuffle, concatenation, transformers."""

MEMORY_CAP_GB = 14
TIMEOUT_S = 2400


def settings(name: str) -> tuple[int, dict[str, Any], dict[str, list[Any]]]:
    """(input size, builder keyword arguments, student knobs) of builder ``name``."""
    size = INPUT.get(name, 32 if name.startswith(INPUT_32) else 28)
    kwargs = dict(KWARGS.get(name, {}))
    knobs: dict[str, list[Any]] = {}
    if name in WIDTH_KNOB:
        kwargs[WIDTH_KNOB[name]] = 0.25
        knobs[WIDTH_KNOB[name]] = [0.25, 0.5]
    return size, kwargs, knobs


def study_doc(name: str, *, data: str, storage: str, runtime: str, trials: int = 2) -> dict[str, Any]:
    size, kwargs, knobs = settings(name)
    return {
        "study": {"name": name, "storage": storage, "trials": trials, "sampler": "random", "references": False,
                  "seed": 0},
        "task": {"dataset": "mnist", "data": data, "family": FAMILY,
                 "options": {"input_size": [size, size], "limit": 256, "holdout_limit": 64, "test_limit": 64},
                 "model": {"kwargs": {"arch": name, **kwargs}, "knobs": knobs}},
        "space": {"sparsity": [0.0, 0.5], "bits": [8, 32]},
        "training": {"teacher_epochs": 1, "distill_steps": 4, "finetune_steps": 2, "qat_steps": 2, "batch_size": 32},
        "latency": {"runtime": runtime, "repeats": 2, "warmup": 1, "min_round_ms": 0.5},
    }


def one(name: str, *, data: str, runtime: str, study: bool) -> dict[str, Any]:
    """Run the check (or a two-trial study) on builder ``name`` in this process; a row of plain data."""
    import torch

    import squeeze.search as ss
    from squeeze.spaces import SqueezeError, get_family

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = ss.spec_from_dict(study_doc(name, data=data, storage=f"sqlite:///{tmp}/coverage.db", runtime=runtime))
        family = get_family(FAMILY)
        params = sum(p.numel() for p in family.build(spec.task.model, in_channels=1, num_classes=10).parameters())
        row: dict[str, Any] = {"model": name, "params_m": round(params / 1e6, 2), "input": settings(name)[0]}
        try:
            if study:
                report = ss.run(spec)
                status = ss.status(spec)
                row |= {"completed": report.budget_completed, "failed": status.counts.get("FAIL", 0),
                        "searched": list(status.searched), "taken_out": list(status.taken_out)}
            else:
                check = ss.check(spec)
                row |= {k: getattr(check, k) for k in ("groups", "groups_pruned", "layers", "layers_quantized",
                                                       "students", "students_built", "attempts")}
                row |= {"searched": list(check.searched), "taken_out": [r.describe() for r in check.removals]}
        except SqueezeError as exc:
            row["refused"] = str(exc)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _capper(gb: float):
    def cap() -> None:
        import resource

        limit = int(gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def in_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`one` in a process of its own, under the memory cap and time limit; what ended it when it did not finish."""
    cmd = [sys.executable, __file__, "--child", name, "--data", args.data, "--runtime", args.runtime]
    if args.studies:
        cmd.append("--studies")
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                              preexec_fn=_capper(args.memory_cap_gb))
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"not finished within {TIMEOUT_S} s", "seconds": TIMEOUT_S}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
    return {"model": name, "error": f"exit {done.returncode}: {tail}", "seconds": round(time.perf_counter() - started, 1)}


def _short(lines: list[str], limit: int = 3) -> str:
    """Removals grouped by what failed (step and message), counted: a table cell."""
    counts: dict[str, int] = {}
    parts: dict[str, list[str]] = {}
    for line in lines:
        part, _, why = line.partition(": ")
        key = why.replace(" (check)", "")[:150]
        counts[key] = counts.get(key, 0) + 1
        parts.setdefault(key, []).append(part)
    cells = [f"{n}x {parts[k][0]}{', ...' if n > 1 else ''}: {k}" for k, n in list(counts.items())[:limit]]
    more = len(counts) - limit
    return "; ".join(cells) + (f"; and {more} more kinds" if more > 0 else "")


def table(rows: list[dict[str, Any]], *, studies: bool) -> str:
    if studies:
        head = "| model | params (M) | input | trials completed | failed | searched | taken out | time (s) |\n|---|---:|---:|---:|---:|---|---|---:|\n"
        body = "".join(
            f"| {r['model']} | {r.get('params_m', '-')} | {r.get('input', '-')} | {r.get('completed', '-')} | "
            f"{r.get('failed', '-')} | {'; '.join(r.get('searched', [])) or r.get('refused') or r.get('error', '')} | "
            f"{_short(r.get('taken_out', [])) or '-'} | {r['seconds']} |\n" for r in rows)
        return head + body
    head = ("| model | params (M) | input | groups found | groups prune | layers | layers int8 | students build | "
            "attempts | time (s) | taken out, and why (or why nothing can be searched) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    body = ""
    for r in rows:
        if "groups" in r:
            students = f"{r['students_built']} of {r['students']}" if r["students"] else "-"
            cells = [r["groups"], r["groups_pruned"], r["layers"], r["layers_quantized"], students, r["attempts"]]
            why = _short(r["taken_out"]) or "nothing"
        else:
            cells = ["-"] * 6
            why = (r.get("refused") or r.get("error", "?")).replace("|", "/")
        body += (f"| {r['model']} | {r.get('params_m', '-')} | {r.get('input', '-')} | "
                 + " | ".join(str(c) for c in cells) + f" | {r['seconds']} | {why} |\n")
    return head + body


def summary(rows: list[dict[str, Any]], *, studies: bool) -> str:
    if studies:
        good = [r for r in rows if r.get("completed") == 2 and r.get("searched") and r.get("failed", 0) < 10]
        return f"{len(good)} of {len(rows)} studies completed two trials with at least one knob searched."
    checked = [r for r in rows if "groups" in r]
    refused = [r for r in rows if "refused" in r]
    errors = [r for r in rows if "error" in r]
    whole = [r for r in checked if not r["taken_out"]]
    pruning = [r for r in checked if r["groups_pruned"]]
    return (f"{len(rows)} builders: {len(checked)} searchable ({len(whole)} with nothing taken out, {len(pruning)} with "
            f"groups that prune), {len(refused)} refused in one sentence, {len(errors)} that did not finish.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="the MNIST folder")
    parser.add_argument("--only", nargs="*", help="these builders only")
    parser.add_argument("--studies", action="store_true", help="two-trial studies over STUDIES instead of the check")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--out", help="also write the table (Markdown) here")
    parser.add_argument("--memory-cap-gb", type=float, default=MEMORY_CAP_GB,
                        help=f"address-space cap of each builder's process (default {MEMORY_CAP_GB})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = os.path.abspath(args.data)
    if args.child:
        print(json.dumps(one(args.child, data=args.data, runtime=args.runtime, study=args.studies)), flush=True)
        return 0

    import torchvision
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    names = args.only or (list(STUDIES) if args.studies else torchvision.models.list_models(module=torchvision.models))
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("builders", total=len(names))
        for name in names:
            bar.update(task, description=name)
            rows.append(in_child(name, args))
            bar.advance(task)
            if args.out:  # written as it goes: a long run that is stopped keeps what it measured
                Path(args.out).write_text(_report(rows, args), encoding="utf-8")
    print(_report(rows, args))
    return 0


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import torch
    import torchvision

    from squeeze.objectives import cpu_model

    what = "two-trial studies" if args.studies else "the check"
    return (f"{what} of torchvision {torchvision.__version__} builders, torch {torch.__version__}, runtime "
            f"{args.runtime}, on {cpu_model()} ({os.cpu_count()} cores, one thread each, "
            f"{args.memory_cap_gb:g} GB address-space cap)\n\n{summary(rows, studies=args.studies)}\n\n"
            + table(rows, studies=args.studies))


if __name__ == "__main__":
    sys.exit(main())
