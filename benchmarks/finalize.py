"""How good is the proxy? A 30-trial study on real MNIST, then every front point finalized.

A trial trains its student for a few hundred steps: enough to rank plans, not to finish them. This
runs one study (``cnn`` teacher, widths 64-128-256, depths 2-2-1, trained with augmentation; the
10,000 ``t10k`` images split into 8,000 training, 1,000 validation and 1,000 test images), then
``squeeze finalize --front`` (every member of the proxy front trained to the end and measured on
the test split, which the search never read) and reports:

- each front point's proxy accuracy (validation, after its trial) beside its finished accuracy
  (test, after finalizing), with its size and latency against the teacher's;
- the rank correlation between the two accuracies (Kendall's tau): how far the search's ranking
  of plans holds once they are finished;
- the finished front (the Pareto front of the finished figures) against the teacher, and the two
  targets: a finished point at least 14x smaller than the teacher's artifact
  within 0.3 point of its test accuracy, and one at least 3x faster (batch 1) within 0.5 point.

    python benchmarks/finalize.py --data ../shared/data/mnist [--trials 30] [--epochs 10] [--teacher-epochs 20]

Writes ``finalize.md`` and ``finalize.json`` to ``--out`` (default ``benchmarks/results``); the study file
and its database live in ``--work`` (default ``benchmarks/out/finalize``), and a rerun resumes the study
(trials and finished models are not redone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.stats import kendalltau

import squeeze.search as ss
from squeeze.objectives import cpu_model

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "finalize"
storage = "sqlite:///{db}"
trials = {trials}
seed = {seed}
snapshot_every = 10

[task]
dataset = "mnist"
family = "cnn"
data = "{data}"
test = 0.1                 # 1,000 of the 10,000 t10k images: the test split, read by finalize only
holdout = 0.11111111       # 1,000 of the other 9,000: validation; 8,000 train

[task.model]
widths = [64, 128, 256]
depths = [2, 2, 1]

[space]
sparsity = [0.0, 0.25, 0.5, 0.75]
bits = [4, 8, 32]
width = [0.5, 0.75, 1.0]
depth = true

[training]
teacher_epochs = {teacher_epochs}
augment = true
batch_size = 64
lr = 0.003

[finalize]
epochs = {epochs}
qat_steps = 300

[latency]
batch = 1
threads = {threads}
runtime = "{runtime}"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"), help="the MNIST folder")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10, help="finalize epochs per front point")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="latency threads")
    parser.add_argument("--runtime", default="torch", help="the study's runtime (latency.runtime)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "out" / "finalize"))
    args = parser.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "finalize.toml"
    path.write_text(STUDY.format(db=(work / "finalize.db").resolve(), trials=args.trials, seed=args.seed,
                                 data=Path(args.data).resolve(), teacher_epochs=args.teacher_epochs, epochs=args.epochs,
                                 threads=args.threads, runtime=args.runtime), encoding="utf-8")
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        search = bar.add_task("trials", total=args.trials)
        ss.run(path, log=lambda m: bar.console.print(m, highlight=False),
               on_trial=lambda counts, _: bar.update(search, completed=counts["COMPLETE"]))
        searched = time.perf_counter() - started
        jobs: dict[int, int] = {}

        def progress(trial: int, stage: str, step: int, steps: int) -> None:
            if trial not in jobs:
                jobs[trial] = bar.add_task(f"finalize trial {trial}", total=steps)
            bar.update(jobs[trial], completed=step)

        finished = ss.finalize(path, front=True, log=lambda m: bar.console.print(m, highlight=False), progress=progress)
    report = _report(path, finished, searched_s=searched, finalized_s=time.perf_counter() - started - searched, args=args)
    (out / "finalize.md").write_text(report["markdown"], encoding="utf-8")
    (out / "finalize.json").write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2),
                                      encoding="utf-8")
    print(report["markdown"])
    return 0


def _report(path: Path, finished: list[ss.Finished], *, searched_s: float, finalized_s: float,
            args: argparse.Namespace) -> dict:
    front = ss.front(path)
    teacher = front.teacher
    by_trial = {p.number: p for p in front.points}
    teacher_test = finished[0].teacher_accuracy
    rows = []
    for f in sorted(finished, key=lambda f: f.size_bytes):
        p = by_trial[f.trial]
        rows.append({
            "trial": f.trial, "student": p.student, "mean_bits": p.mean_bits, "mean_sparsity": p.mean_sparsity,
            "proxy_accuracy": f.proxy_accuracy, "finished_accuracy": f.accuracy,
            "delta_points": 100 * (f.accuracy - teacher_test), "size_kb": f.size_bytes / 1024,
            "smaller_x": teacher.size_bytes / f.size_bytes, "latency_ratio": f.latency_ratio,
            "faster_x": 1 / f.latency_ratio, "proxy_size_kb": p.size_bytes / 1024, "proxy_latency_ratio": p.latency_ratio,
        })
    tau = kendalltau([r["proxy_accuracy"] for r in rows], [r["finished_accuracy"] for r in rows])
    # The finished front: the Pareto front of the finished figures, as the search's own front is of the proxies'.
    finished_points = [dataclasses.replace(by_trial[f.trial], accuracy=f.accuracy, size_bytes=f.size_bytes,
                                           latency_ratio=f.latency_ratio) for f in finished]
    finished_front = {p.number for p in ss.pareto_front(finished_points)}
    small = [r for r in rows if r["smaller_x"] >= 14 and r["delta_points"] >= -0.3]
    fast = [r for r in rows if r["faster_x"] >= 3 and r["delta_points"] >= -0.5]
    lines = [
        "# Finalize: proxy against finished accuracy",
        "",
        f"`{' '.join(['python', 'benchmarks/finalize.py', *sys.argv[1:]])}` on {_cpu()}, "
        f"latency threads {args.threads}, batch 1, runtime {args.runtime}.",
        f"Study: {args.trials} trials on real MNIST (t10k: 8,000 train, 1,000 validation, 1,000 test), cnn 64-128-256 "
        f"depths 2-2-1, teacher {args.teacher_epochs} epochs with augmentation; every front point finalized with "
        f"{finished[0].epochs} epochs. Search {searched_s / 60:.0f} min, finalize {finalized_s / 60:.0f} min.",
        "",
        f"Teacher: validation {teacher.accuracy:.4f}, **test {teacher_test:.4f}**, {teacher.size_bytes / 1024:.1f} KB, "
        f"{(teacher.latency_ms or 0):.3f} ms.",
        "",
        "| trial | student | mean bits | mean sparsity | proxy acc (val) | finished acc (test) | vs teacher (points) "
        "| size KB | smaller | latency ratio | faster | finished front |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['student']} | {r['mean_bits']:.1f} | {r['mean_sparsity']:.2f} | {r['proxy_accuracy']:.4f} "
            f"| {r['finished_accuracy']:.4f} | {r['delta_points']:+.2f} | {r['size_kb']:.1f} | {r['smaller_x']:.1f}x "
            f"| {r['latency_ratio']:.3f} | {r['faster_x']:.2f}x | {'yes' if r['trial'] in finished_front else ''} |")
    lines += [
        "",
        f"Kendall's tau between proxy and finished accuracy over the {len(rows)} front points: "
        f"**{tau.statistic:.3f}** (p = {tau.pvalue:.3f}).",
        "",
        f"- teacher test accuracy >= 0.992: {'met' if teacher_test >= 0.992 else 'NOT met'} ({teacher_test:.4f})",
        f"- a finished point >= 14x smaller within 0.3 point: "
        + (f"met by trial {small[0]['trial']} ({small[0]['smaller_x']:.1f}x, {small[0]['delta_points']:+.2f} points)"
           if small else "NOT met"),
        f"- a finished point >= 3x faster (batch 1) within 0.5 point: "
        + (f"met by trial {max(fast, key=lambda r: r['faster_x'])['trial']} "
           f"({max(fast, key=lambda r: r['faster_x'])['faster_x']:.2f}x, "
           f"{max(fast, key=lambda r: r['faster_x'])['delta_points']:+.2f} points)" if fast else "NOT met"),
        "",
    ]
    return {"teacher": {"validation": teacher.accuracy, "test": teacher_test, "size_bytes": teacher.size_bytes,
                        "latency_ms": teacher.latency_ms},
            "rows": rows, "kendall_tau": tau.statistic, "kendall_p": tau.pvalue, "finished_front": sorted(finished_front),
            "cpu": _cpu(), "searched_s": searched_s, "finalized_s": finalized_s, "markdown": "\n".join(lines)}


def _cpu() -> str:
    """The CPU model with the int8 instruction sets that decide its latency ratios, and its core count."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    extras = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("amx_int8", "AMX")) if flag in flags]
    isa = f" with {' and '.join(extras)}" if extras else (" with AVX2 only" if "avx2" in flags else "")
    return f"{cpu_model()}{isa}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
