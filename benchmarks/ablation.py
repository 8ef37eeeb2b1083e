"""Sampler ablation across tasks: the default sampler against plain TPE, NSGA-II and random search.

Every (task, method, seed) is one study in its own SQLite file under ``--out``, run to the task's budget
through the library's own worker loop (:func:`squeeze.search.open_session`), uniform references
included in every study (they are the baseline every front is compared with). Then, for each task and
seed, every distinct network of every method's study (by its ``latency_key``) is timed again in this
one process, in ``--retime-passes`` shuffled passes, so that the methods' fronts are compared on the
same measurements rather than on each study's own timing under whatever load it met. A study's
hypervolume is reported both ways: as ``squeeze status`` prints it (its own timings) and retimed.
The reference point of the hypervolume is (error 1.0, 1.5x the teacher's bytes, 2x its latency).

    python benchmarks/ablation.py --tasks digits --seeds 0 1 2 --out benchmarks/out/ablation
    python benchmarks/ablation.py --tasks mnist --data ../shared/data/mnist --seeds 0 1 2

Methods: ``random``, ``tpe``, ``nsga2``, ``gp`` and ``auto`` (the default), as ``study.sampler`` names
them. The earlier ``auto`` (uniform anchors, local moves of front points and of the references, a switch
to NSGA-II) and its ablations (``auto-noanchors``, ``auto-nofront``, ``auto-norefs``, ``auto-noswitch``,
``tpe-anchors``) ran with this script as of commit 3b7ae2a; the ablation removed them from the product
(``benchmarks/README.md``, "Sampler ablation across tasks"). Every task but ``digits-ort`` runs in the
``torch`` runtime (``latency.runtime=torch``), as the first digits rows did; ``digits-ort`` is the default
study in its own runtime, ONNX Runtime, as a user runs it. Each row counts the study's repeated plans:
completed trials whose plan an earlier trial had already judged. Results go to ``--out/ablation.json`` (one
row a study) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch
from squeeze.objectives import deploy, measure
from squeeze.search import TrialAttr, hypervolume, load_spec, open_session, worker_seed
from squeeze.search.samplers import make_sampler

REPO = Path(__file__).resolve().parents[1]

TASKS = {
    # The default study, timed in torch as the first rows were.
    "digits": {"file": REPO / "studies" / "digits.toml", "set": ["latency.runtime=torch"]},
    # The default study as a user runs it: timed in its own runtime, ONNX Runtime.
    "digits-ort": {"file": REPO / "studies" / "digits.toml", "set": []},
    # The search-quality benchmark's task: MNIST files, a 16-32-64 CNN.
    "mnist": {"file": REPO / "studies" / "digits.toml", "set": [
        "latency.runtime=torch", "task.dataset=mnist", "task.holdout=0.2", "task.options.limit=4000", "task.options.holdout_limit=1000",
        "training.teacher_epochs=3", "training.distill_steps=200", "training.finetune_steps=60",
        "training.qat_steps=40"]},
    # A family auto was never tuned on: mobilenet_v2 (width 0.5) on the MNIST files. Costly: its first trial took
    # 121 s on 2 loaded cores of an AMD EPYC (2026-12-07; 72 s on digits' 8x8 images), so digits-ptq stood in for it.
    "mobilenet": {"file": REPO / "studies" / "digits.toml", "set": [
        "latency.runtime=torch", "task.dataset=mnist", "task.family=mobilenet_v2", "task.model={width = 0.5}", "task.holdout=0.2",
        "task.options.limit=3000", "task.options.holdout_limit=800", "training.teacher_epochs=2",
        "training.distill_steps=150", "training.finetune_steps=40", "training.qat_steps=30", "space.depth=false",
        "space.width=[0.5, 1.0]"]},
    # A network, pruner and quantizer auto was never tuned on, at the default study's cost: the CNN at
    # 24-48-96 with two blocks in its later stages, FPGM pruning and post-training quantization, on digits.
    "digits-ptq": {"file": REPO / "studies" / "digits.toml", "set": [
        "latency.runtime=torch", "task.model={widths = [24, 48, 96], depths = [1, 2, 2]}", "compress.pruner=fpgm",
        "compress.quantizer=ptq"]},
}

METHODS = ("random", "tpe", "nsga2", "gp", "auto", "tpe-half", "tpe-indep", "auto-repeats")
VARIANTS = {
    # Candidates for the default, tried here before any enters the product: TPE that draws at random for half
    # the budget (not a quarter), and TPE that models each parameter alone (Optuna's default) rather than
    # jointly; the second became ``auto`` after the run that chose it, and is built here as ``auto`` is.
    "tpe-half": lambda seed, trials: optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=trials // 2, multivariate=True, constant_liar=True),
    "tpe-indep": lambda seed, trials: make_sampler("auto", seed=seed, trials=trials),
}
"""Candidates for the default: their studies record ``tpe`` as ``study.sampler`` and run with this sampler."""
SETTINGS = {
    # ``auto`` judging again the plans it proposes again (as before the worker skipped them): early stopping off,
    # which on a task with no budgets in ``[objectives]`` (all of these) switches off only that skip.
    "auto-repeats": ("auto", ["study.early_stop=false"]),
}
"""Methods that are a named sampler with study settings of their own: name -> (sampler, overrides)."""


def _spec(args: argparse.Namespace, task: str, method: str, seed: int):
    name = f"{task}-{method}-s{seed}"
    sampler, extra = SETTINGS.get(method, ("tpe" if method in VARIANTS else method, []))
    overrides = [*TASKS[task]["set"], *extra, f"study.name={name}", f"study.sampler={sampler}", f"study.seed={seed}",
                 f"study.trials={args.trials or 40}", f"study.storage=sqlite:///{args.out / (name + '.db')}"]
    return load_spec(TASKS[task]["file"], overrides=overrides, data=None if task.startswith("digits") else args.data)


def run_study(args: argparse.Namespace, task: str, method: str, seed: int) -> dict:
    """One study, run to its budget (resumed if it exists); what the table needs."""
    torch.set_num_threads(1)
    spec = _spec(args, task, method, seed)
    started = time.perf_counter()
    session = open_session(spec, create=True)
    variant = VARIANTS.get(method)
    session.work(handle_signals=False,
                 sampler=variant(worker_seed(seed, 0), spec.study.trials) if variant else None)
    points = session.points()
    return {"task": task, "method": method, "seed": seed, "trials": len(points),
            "minutes": round((time.perf_counter() - started) / 60, 2),
            "hypervolume": hypervolume(points, teacher=session.teacher_figures),
            "repeated_plans": repeated_plans(session.study)}


def repeated_plans(study: optuna.Study) -> int:
    """Completed trials whose plan an earlier completed trial of the study already had (judged again for nothing)."""
    seen: set[str] = set()
    repeats = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        plan = json.dumps(t.user_attrs.get(TrialAttr.PLAN), sort_keys=True)
        repeats += plan in seen
        seen.add(plan)
    return repeats


def retime(args: argparse.Namespace, task: str, seed: int, methods: list[str], rows: list[dict]) -> None:
    """Every distinct network of the seed's studies timed again here; each row gains ``hypervolume_retimed``."""
    torch.set_num_threads(1)
    sessions = {m: open_session(_spec(args, task, m, seed), create=False) for m in methods}
    base = sessions[methods[0]]
    networks: dict[str, tuple[str, int]] = {}
    keys: dict[str, dict[int, str]] = {}
    for m, s in sessions.items():
        done = s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        keys[m] = {t.number: t.user_attrs[TrialAttr.LATENCY_KEY] for t in done}
        for t in done:
            networks.setdefault(keys[m][t.number], (m, t.number))
    modules = {key: deploy(sessions[m].artifact(n), runtime=sessions[m].spec.latency.runtime)
               for key, (m, n) in networks.items()}
    example = base.data.x_train[:1]
    timings: dict[str, list[float]] = {key: [] for key in networks}
    for attempt in range(args.retime_passes):
        order = sorted(networks)
        random.Random(seed + 1000 * attempt).shuffle(order)
        for key in order:
            timings[key].append(measure(modules[key], base.teacher.deployed, example, spec=base.spec.latency).ratio)
    ratio = {key: statistics.median(t) for key, t in timings.items()}
    for row in rows:
        if row["task"] == task and row["seed"] == seed and row["method"] in sessions:
            s = sessions[row["method"]]
            again = [dataclasses.replace(p, latency_ratio=ratio[keys[row["method"]][p.number]]) for p in s.points()]
            row["hypervolume_retimed"] = hypervolume(again, teacher=s.teacher_figures)
    print(f"# {task} seed {seed}: {len(networks)} networks timed again in {args.retime_passes} passes", flush=True)


def table(rows: list[dict]) -> str:
    """Markdown: per task and method, the mean retimed hypervolume, each seed's, and the study-timed mean."""
    head = ("| task | method | mean HV (retimed) | per seed (retimed) | mean HV (own timing) | trials | repeated plans "
            "| minutes |")
    out = [head, "|---|---|---:|---|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            mine = sorted((r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["seed"])
            again = [r.get("hypervolume_retimed", float("nan")) for r in mine]
            out.append(f"| {task} | {method} | {statistics.mean(again):.4f} | "
                       f"{', '.join(f'{v:.4f}' for v in again)} | "
                       f"{statistics.mean(r['hypervolume'] for r in mine):.4f} | "
                       f"{sum(r['trials'] for r in mine)} | {_total(mine, 'repeated_plans')} | "
                       f"{sum(r['minutes'] for r in mine):.1f} |")
    return "\n".join(out)


def _total(rows: list[dict], key: str) -> str:
    """The sum of ``key`` over rows, or a dash where a row (of an earlier version of this script) lacks it."""
    return str(sum(r[key] for r in rows)) if all(key in r for r in rows) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits"], choices=sorted(TASKS))
    parser.add_argument("--methods", nargs="+", default=["random", "tpe", "nsga2", "auto"], choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=None, help="budget of each study (default: 40)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--retime-passes", type=int, default=9,
                        help="shuffled timing passes per network (default 9); 0: no retiming (studies run, table later)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "ablation")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "ablation.json"

    def save(rows: list[dict], changed: set[tuple]) -> list[dict]:
        # Processes may share ``--out`` (one seed or method each): only the rows this one ran or retimed
        # replace those on file.
        on_file = json.loads(results.read_text()) if results.exists() else []
        merged = {(r["task"], r["method"], r["seed"]): r for r in on_file}
        merged.update({(r["task"], r["method"], r["seed"]): r for r in rows if (r["task"], r["method"], r["seed"]) in changed})
        results.write_text(json.dumps(list(merged.values()), indent=1))
        return list(merged.values())

    rows = json.loads(results.read_text()) if results.exists() else []
    done = {(r["task"], r["method"], r["seed"]) for r in rows}
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                if (task, method, seed) in done:
                    continue
                rows.append(run_study(args, task, method, seed))
                print(f"# {rows[-1]}", flush=True)
                rows = save(rows, {(task, method, seed)})
            if args.retime_passes:
                retime(args, task, seed, [m for m in args.methods], rows)
                rows = save(rows, {(task, m, seed) for m in args.methods})
    print(table([r for r in rows if r["task"] in args.tasks and r["method"] in args.methods]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
