"""Search quality on real MNIST: samplers, the uniform grid, and joint against sequential search.

For each seed, every method gets the same teacher (trained here once per seed, on that seed's
training split, and given to each study as a checkpoint: the split follows the study's seed, so a
teacher shared across seeds would have trained on the other seeds' held-out images), the same
data, the same training budget per trial and the same number of trials:

- ``auto`` (the default, see ``docs/samplers.md``), ``nsga2``, ``gp`` and ``random``: the
  joint space, with the study's four uniform references (bits 8/4 x sparsity 0/0.5, full width)
  enqueued first, as every study does (``auto`` is plain multi-objective TPE today);
- ``grid``: uniform policies alone (every layer the same bits and sparsity, every stage the same
  width), every combination of the space's choices that fits in the trial budget;
- ``sequential``: half the trials searching pruning and the student with every layer in float
  (bits fixed to 32 with Optuna's ``PartialFixedSampler``), then half searching bit-widths alone
  on the best pruned student found (the smallest within 2 points of the teacher's accuracy, else
  the most accurate), as one compresses by hand: prune first, then quantize.

Every trial of a study trains with the study's one seed (common random numbers, as in every
study), so a difference between two plans of a study is theirs and not training noise's.

Every study declares the budget ``min_accuracy`` (0.85 by default): a model that far below the
teacher is not a candidate, and without it the hypervolume is dominated by chance-level students
that are small and fast. So the searches stop such trials early (the library's default), and only
feasible points count. The grid runs each of its policies to the end. The hypervolume is the
library's own (normalised by the teacher, reference point (1, 1.5, 2)).
For each of the default sampler's uniform references, the best front point that dominates it
(at least as good in all three objectives, better in one) is reported.

Latency is timed at batch 32 (``--latency-batch``): at batch 1 this 16-32-64 network's int8 plans
all run in about the same time whatever they prune (per-operator dispatch outweighs its kernels),
so latency would not tell plans apart; at batch 32 pruning shows in the time. As in every study, a
network is timed once and plans that materialize the same network share that measurement.

    python benchmarks/search_quality.py --data ../shared/data/mnist [--trials 60] [--jobs 1] [--seeds 0,1,2]

Writes ``search_quality.md`` (the tables), ``search_quality.png`` (hypervolume over trials, mean
and range over seeds) and ``search_quality.json`` to ``--out`` (default ``benchmarks/results``).
Each study goes to its own SQLite file there; a rerun resumes them. After the studies, every
network of a seed is timed again, alone (the median of three passes), and the studies are scored again with those figures
(``retime()``; ``--no-retime`` skips it): studies that run side by side time their networks under
different loads, and that drift is as large as the differences between methods. Then the default
sampler's reference verdict is given once more with accuracy the mean over ``--confirm-seeds``
training seeds, for the references and the points within reach of them (``_confirm.py``): near a
reference, the study's one draw of training noise decides the verdict as one timing decided latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
import torch

from _confirm import confirm, remeasured, within_noise
from squeeze.objectives import TrainingBudget, decode, load_task, measure, train_teacher
from squeeze.search import (
    Point,
    TrialAttr,
    hypervolume,
    hypervolume_history,
    load_spec,
    open_session,
    pareto_front,
    references_beaten,
    worker_seed,
)
from squeeze.search.samplers import make_sampler
from squeeze.spaces import JointSpace, get_family

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "{name}"
storage = "{storage}"
trials = {trials}
sampler = "{sampler}"
seed = {seed}
snapshot_every = 10
references = {references}
early_stop = {early_stop}

[task]
dataset = "mnist"
family = "cnn"
holdout = 0.2
data = "{data}"
options = {{ limit = {limit}, holdout_limit = {holdout_limit} }}

[task.model]
widths = [{widths}]
depths = [1, 2, 1]
checkpoint = "{checkpoint}"

[space]
sparsity = [0.0, 0.25, 0.5, 0.75]
bits = [{bits}]
width = [0.5, 0.75, 1.0]
depth = true

[objectives]
min_accuracy = {min_accuracy}

[training]
teacher_epochs = {epochs}
distill_steps = {distill}
finetune_steps = {finetune}
qat_steps = {qat}
batch_size = 64

[latency]
batch = {latency_batch}
threads = 1
warmup = 20
repeats = {repeats}
min_round_ms = 5.0
"""

SAMPLERS = ("auto", "nsga2", "gp", "random")
METHODS = (*SAMPLERS, "grid", "sequential")
SLOW = {"gp": 0, "sequential": 1, "auto": 2, "nsga2": 3, "random": 4, "grid": 5}
"""Start order: studies that take longest first."""


def study_url(args: argparse.Namespace, name: str) -> str:
    """The SQLite database of the study ``name`` (each study has its own)."""
    return f"sqlite:///{args.out / f'search_quality-{name}.db'}"


def study_text(args: argparse.Namespace, *, name: str, sampler: str, seed: int, references: bool, trials: int,
               early_stop: bool = True) -> str:
    return STUDY.format(
        early_stop="true" if early_stop else "false", min_accuracy=args.min_accuracy, name=name, storage=study_url(args, name), trials=trials, sampler=sampler, seed=seed,
        references="true" if references else "false", data=args.data.resolve(), limit=args.limit,
        holdout_limit=args.holdout_limit, checkpoint=teacher_path(args, seed), epochs=args.epochs,
        distill=args.distill, finetune=args.finetune, qat=args.qat, repeats=args.repeats,
        latency_batch=args.latency_batch,
        widths=", ".join(str(w) for w in args.widths), bits=", ".join(str(b) for b in args.bits),
    )


def write_study(args: argparse.Namespace, **kw) -> Path:
    path = args.out / "studies" / f"{kw['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(study_text(args, **kw), encoding="utf-8")
    return path


def teacher_path(args: argparse.Namespace, seed: int) -> Path:
    return args.out / f"teacher-{'-'.join(map(str, args.widths))}-s{seed}.pt"


def train_shared_teacher(args: argparse.Namespace, seed: int) -> None:
    """One teacher for every study of ``seed``: trained on that seed's training split only."""
    target = teacher_path(args, seed)
    if target.exists():
        return
    spec = load_spec(write_study(args, name=f"teacher-s{seed}", sampler="random", seed=seed, references=False, trials=1))
    data = load_task(spec.task.dataset, options=spec.task.options, seed=spec.study.seed, holdout=spec.task.holdout,
                     data_dir=spec.task.data)
    family = get_family("cnn")
    options = {k: v for k, v in spec.task.model.items() if k != "checkpoint"}
    # Seeded before it is built, so that its first weights (and the whole teacher) follow from the seed.
    torch.manual_seed(seed)
    model = family.build(options, in_channels=data.in_channels, num_classes=data.num_classes)
    train_teacher(model, data.x_train, data.y_train, budget=TrainingBudget(teacher_epochs=args.epochs), seed=seed)
    torch.save(model.state_dict(), target)


class Session:
    """One study of the benchmark, driven through the library's own worker loop."""

    def __init__(self, args: argparse.Namespace, *, name: str, sampler: str, seed: int, references: bool,
                 trials: int, early_stop: bool = True) -> None:
        self.path = write_study(args, name=name, sampler=sampler, seed=seed, references=references, trials=trials,
                                early_stop=early_stop)
        self.study = open_session(load_spec(self.path), create=True)
        self.spec, self.data, self.space, self.bundle = self.study.spec, self.study.data, self.study.space, self.study.teacher
        self.teacher = self.study.teacher_figures

    def run(self, *, trials: int | None = None, sampler: optuna.samplers.BaseSampler | None = None) -> None:
        self.study.work(trials=trials, sampler=sampler, handle_signals=False)

    def points(self) -> list[Point]:
        return self.study.points()

    def completed(self) -> int:
        return len(self.points())


def session(args: argparse.Namespace, method: str, seed: int) -> Session:
    """The study of ``method`` for ``seed``, created or resumed, with that method's options."""
    name = f"{method}-s{seed}"
    if method == "grid":
        # A fixed list: every policy runs to the end (an early stop would let the sampler add trials to it).
        return Session(args, name=name, sampler="random", seed=seed, references=False, trials=args.trials,
                       early_stop=False)
    if method == "sequential":
        return Session(args, name=name, sampler="auto", seed=seed, references=False, trials=args.trials)
    return Session(args, name=name, sampler=method, seed=seed, references=True, trials=args.trials)


def run_sampler(args: argparse.Namespace, sampler: str, seed: int) -> Session:
    s = session(args, sampler, seed)
    s.run()
    return s


def uniform_grid(space: JointSpace, spec, trials: int) -> list[dict]:
    bits = sorted(spec.space.bits, reverse=True)
    sparsity = sorted(spec.space.sparsity)
    widths = sorted(spec.space.width, reverse=True)
    grid = [space.uniform_params(sparsity=s, bits=b, width=w) for w, b, s in itertools.product(widths, bits, sparsity)]
    return grid[:trials]


def run_grid(args: argparse.Namespace, seed: int) -> Session:
    probe = session(args, "grid", seed)
    grid = uniform_grid(probe.space, probe.spec, args.trials)
    study = probe.study.study
    if not study.user_attrs.get("grid_enqueued"):
        for params in grid:
            study.enqueue_trial(params, user_attrs={TrialAttr.REFERENCE: "uniform grid"})
        study.set_user_attr("grid_enqueued", True)
    probe.run(trials=len(grid))
    return probe


def run_sequential(args: argparse.Namespace, seed: int) -> Session:
    s = session(args, "sequential", seed)
    first = args.trials // 2
    base = lambda: make_sampler("auto", seed=worker_seed(seed, 0), trials=args.trials)  # noqa: E731
    floats = {f"bits.{layer}": 32 for layer in s.space.quantizable}
    if s.space.float_choice:
        floats["precision"] = "float"
    if s.completed() < first:
        s.run(trials=first, sampler=optuna.samplers.PartialFixedSampler(floats, base()))
    study = optuna.load_study(study_name=s.spec.study.name, storage=s.spec.study.storage)
    pruned = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)[:first]
    good = [t for t in pruned if t.values[0] >= s.teacher.accuracy - 0.02]
    best = min(good, key=lambda t: t.values[1]) if good else max(pruned, key=lambda t: t.values[0])
    fixed = {k: v for k, v in best.params.items() if not k.startswith("bits.") and k != "precision"}
    study.set_user_attr("sequential_base_trial", best.number)
    s.run(trials=args.trials, sampler=optuna.samplers.PartialFixedSampler(fixed, base()))
    return s


def run_study(args: argparse.Namespace, method: str, seed: int) -> dict:
    """One method for one seed, on one thread in its own SQLite file; returns what the report needs."""
    torch.set_num_threads(1)
    runners = {"grid": run_grid, "sequential": run_sequential}
    session = runners[method](args, seed) if method in runners else run_sampler(args, method, seed)
    pts = session.points()
    trials = optuna.load_study(study_name=session.spec.study.name,
                               storage=session.spec.study.storage).get_trials(deepcopy=False)
    history = hypervolume_history(pts, teacher=session.teacher)
    out = {
        "hypervolume": hypervolume(pts, teacher=session.teacher),
        "history": [h.hypervolume for h in history],
        "trials": len(pts),
        "front": len(pareto_front(pts)),
        # From the study's own timestamps, so a resumed study reports its whole span.
        "seconds": round((max(t.datetime_complete for t in trials if t.datetime_complete)
                          - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds(), 1),
        "trial_s": statistics.median(t.user_attrs["trial_s"] for t in trials if "trial_s" in t.user_attrs),
        "sampler_ms": statistics.median(t.user_attrs.get("sampler_ms", 0.0) for t in trials),
        "teacher": {"accuracy": session.teacher.accuracy, "size_bytes": session.teacher.size_bytes},
        "points": [dataclasses.asdict(p) for p in pts] if method.startswith("auto") else [],
        "references": {t.number: t.user_attrs["reference"] for t in trials if "reference" in t.user_attrs},
        # The auto sampler's uniform anchors: starting points, not per-layer policies.
        "anchors": {t.number: t.user_attrs["anchor"] for t in trials if "anchor" in t.user_attrs},
        # Trials whose plan is a reference's own (a sampler may draw a uniform policy again):
        # beating the reference with it is not a per-layer policy's win.
        "same_policy": _same_policy(trials),
        "stopped_early": sum(1 for t in trials if "stopped_early" in t.user_attrs),
        "latency_reused": sum(1 for t in trials if t.user_attrs.get("latency_reused")),
        "saved_s": round(sum(float(t.user_attrs.get("saved_s", 0.0)) for t in trials), 1),
        "samplers": sorted({str(t.user_attrs["sampler"]) for t in trials if "sampler" in t.user_attrs}),
    }
    print(f"{method} seed {seed}: hypervolume {out['hypervolume']:.4f}, {len(pts)} trials, {out['seconds']} s",
          flush=True)
    return out


def _same_policy(trials: list[optuna.trial.FrozenTrial]) -> dict[int, str]:
    refs = {json.dumps(t.params, sort_keys=True): t.user_attrs["reference"] for t in trials if "reference" in t.user_attrs}
    return {t.number: refs[key] for t in trials if "reference" not in t.user_attrs
            and (key := json.dumps(t.params, sort_keys=True)) in refs}


def retime(args: argparse.Namespace, seeds: list[int], methods: list[str], results: dict[str, dict[int, dict]]) -> None:
    """Time every network of a seed's studies again, alone, and score each study again with those figures.

    The studies run ``--jobs`` at a time and time their own networks while the others train, so
    one network can read differently in two studies (seed 1 of an earlier run: the uniform 8-bit
    reference at sparsity 0.5 read 0.362x in ``auto``'s study and 0.335x in the grid's copy of it).
    Hypervolumes from each study's own timings then compare the studies' neighbours as well as
    their fronts. Here every distinct network of a seed (by ``latency_key``; all methods of a
    seed share the teacher and the protocol) is timed again, in this one process with nothing
    else running, in ``--retime-passes`` passes, each in its own shuffled order so that no method's
    networks come first and a slow minute of the machine falls on different networks in each pass;
    a network's ratio is the median of its passes (with one pass, two timings of the same grid
    studies an hour apart gave mean hypervolumes 0.010 apart, one seed's 0.030). Each study's points take those
    ratios, and the hypervolume and the reference table are computed again.
    """
    torch.set_num_threads(1)
    for seed in seeds:
        base = session(args, methods[0], seed)
        example = base.data.x_train[:1]
        studies: dict[str, optuna.Study] = {}
        keys: dict[str, dict[int, str]] = {}
        networks: dict[str, tuple[str, str, int]] = {}
        for method in methods:
            name = f"{method}-s{seed}"
            url = study_url(args, name)
            studies[method] = optuna.load_study(study_name=name, storage=url)
            done = studies[method].get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            keys[method] = {t.number: t.user_attrs[TrialAttr.LATENCY_KEY] for t in done}
            for t in done:
                networks.setdefault(t.user_attrs[TrialAttr.LATENCY_KEY], (method, name, t.number))
        sessions = {method: session(args, method, seed) for method in methods}
        modules = {key: decode(sessions[method].study.artifact(number)).module
                   for key, (method, name, number) in networks.items()}
        timings: dict[str, list[float]] = {key: [] for key in networks}
        for attempt in range(args.retime_passes):
            order = sorted(networks)
            random.Random(seed + 1000 * attempt).shuffle(order)
            for key in order:
                timings[key].append(measure(modules[key], base.bundle.deployed, example, spec=base.spec.latency).ratio)
            print(f"seed {seed}: {len(order)} networks timed again (pass {attempt + 1} of {args.retime_passes})",
                  flush=True)
        ratio = {key: statistics.median(t) for key, t in timings.items()}
        for method, study in studies.items():
            own = sessions[method].points()
            again = [dataclasses.replace(p, latency_ratio=ratio[keys[method][p.number]]) for p in own]
            drift = [abs(p.latency_ratio - q.latency_ratio) / q.latency_ratio for p, q in zip(own, again)]
            results[method][seed]["retimed"] = {
                "hypervolume": hypervolume(again, teacher=base.teacher),
                "history": [h.hypervolume for h in hypervolume_history(again, teacher=base.teacher)],
                "networks": len(networks),
                "drift_median": statistics.median(drift),
                "passes": args.retime_passes,
                # How far apart the passes read one network: the noise left in this measure.
                "spread_median": statistics.median((max(t) - min(t)) / ratio[k] for k, t in timings.items()),
                "points": [dataclasses.asdict(p) for p in again] if method.startswith("auto") else [],
            }


def judged_points(r: dict) -> list[Point]:
    """A study's points as the reference verdict judges them (timed again where they were), references marked."""
    labels = {int(k) for k in r["references"]}
    return [dataclasses.replace(Point(**p), reference=p["number"] in labels)
            for p in (r["retimed"]["points"] if "retimed" in r else r["points"])]


def confirm_references(args: argparse.Namespace, by_seed: dict[int, dict]) -> None:
    """The default sampler's references, and the points within reach of them, trained under more seeds (see _confirm.py)."""
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        confirmed = confirm(
            {seed: args.out / "studies" / f"auto-s{seed}.toml" for seed in by_seed},
            {seed: judged_points(r) for seed, r in by_seed.items()},
            seeds=args.confirm_seeds, margin=args.confirm_margin,
            skip={seed: {int(k) for k in r.get("same_policy", {})} for seed, r in by_seed.items()},
            submit=pool.submit,
        )
    for seed, r in by_seed.items():
        r["confirmed"] = confirmed[seed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--limit", type=int, default=6000, help="training images (of the 8,000 not held out)")
    parser.add_argument("--holdout-limit", type=int, default=2000, help="held-out images (all 2,000 by default)")
    parser.add_argument("--widths", type=lambda v: [int(w) for w in v.split(",")], default=[16, 32, 64],
                        help="the teacher's stage widths (family cnn, depths 1-2-1)")
    parser.add_argument("--bits", type=lambda v: [int(b) for b in v.split(",")], default=[2, 3, 4, 8, 32],
                        help="the space's bit-widths a layer (32: float); 3 is the step between the 4-bit references "
                             "and 2 bits: in a run without it, seed 2's plans beside its 4-bit reference at "
                             "sparsity 0.5 with a layer at 2 bits lost 0.5 and 1.35 points")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--distill", type=int, default=240)
    parser.add_argument("--finetune", type=int, default=60)
    parser.add_argument("--qat", type=int, default=20)
    parser.add_argument("--min-accuracy", type=float, default=0.85,
                        help="the studies' accuracy budget: a model below it is not a candidate")
    parser.add_argument("--repeats", type=int, default=60,
                        help="latency rounds a trial (5 ms each at least); on a loaded machine 12 gave a reading of 0.28x for a 0.9x model")
    parser.add_argument("--latency-batch", type=int, default=32,
                        help="images a timed call; at batch 1 every int8 plan of this small network runs at the same "
                             "speed (dispatch outweighs the kernels), so latency would not tell plans apart")
    parser.add_argument("--jobs", type=int, default=1,
                        help="studies run at once, one process (and thread) each; more than the cores left idle makes latency noisy")
    parser.add_argument("--no-retime", dest="retime", action="store_false",
                        help="skip timing every network once more, alone, after the studies (see retime())")
    parser.add_argument("--retime-passes", type=int, default=3,
                        help="passes over a seed's networks when they are timed again; each network takes the median")
    parser.add_argument("--confirm-seeds", type=int, default=5,
                        help="training seeds (the study's own first) whose mean accuracy judges the default sampler's "
                             "references and the points within reach of them (see _confirm.py); 1 skips this")
    parser.add_argument("--confirm-margin", type=float, default=0.005,
                        help="how much less accurate than a reference, under the study's seed, a point as small and "
                             "fast may be and still be trained again for the reference verdict")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods must name methods of {list(METHODS)}, but got {', '.join(unknown)}.")
    if args.retime_passes < 1:
        parser.error(f"--retime-passes must be at least 1 (--no-retime skips the retime), but got {args.retime_passes}.")
    if args.confirm_seeds < 1:
        parser.error(f"--confirm-seeds must be at least 1 (1 skips the confirmation), but got {args.confirm_seeds}.")
    if not 0.0 <= args.confirm_margin < 1.0:
        parser.error(f"--confirm-margin must be in [0, 1), but got {args.confirm_margin}.")

    started = time.perf_counter()
    for seed in seeds:
        train_shared_teacher(args, seed)
    results: dict[str, dict[int, dict]] = {}
    # One process per study (each on one thread, in its own SQLite file), --jobs at a time; the
    # slowest methods first, so that the last minutes are not one long study alone.
    order = sorted(((m, s) for s in seeds for m in methods), key=lambda ms: (SLOW.get(ms[0], 9), ms[1]))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(run_study, [args] * len(order), [m for m, _ in order], [s for _, s in order])
        for (method, seed), result in zip(order, done):
            results.setdefault(method, {})[seed] = result
    results = {m: dict(sorted(results[m].items())) for m in methods if m in results}
    if args.retime:
        retime(args, seeds, list(results), results)
    if args.confirm_seeds > 1 and "auto" in results:
        confirm_references(args, results["auto"])
    (args.out / "search_quality.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    report = render(results, args, elapsed=time.perf_counter() - started)
    (args.out / "search_quality.md").write_text(report, encoding="utf-8")
    draw_history(results, args.out / "search_quality.png")
    print(report)
    return 0


def render(results: dict[str, dict[int, dict]], args: argparse.Namespace, *, elapsed: float) -> str:
    first = next(iter(results.values()))
    teachers = [first[seed]["teacher"]["accuracy"] for seed in sorted(first)]
    lines = [
        f"{args.trials} trials a study, seeds {args.seeds}; MNIST ({args.limit} training images, "
        f"{args.holdout_limit} held out); bits {', '.join(map(str, args.bits))} a layer; teacher cnn {'-'.join(map(str, args.widths))} (depths 1-2-1) trained once a seed "
        f"on that seed's split (held-out accuracy {', '.join(f'{a:.4f}' for a in teachers)}); budget min_accuracy = "
        f"{args.min_accuracy}; latency at batch {args.latency_batch}; {sum(r['seconds'] for m in results.values() for r in m.values()) / 60:.0f} min of "
        f"study time in all, {args.jobs} studies at a time on this machine.",
        "",
    ]
    retimed = all("retimed" in r for by_seed in results.values() for r in by_seed.values())
    if retimed:
        # The fair comparison leads: a study's own timings also measure what ran beside it (the
        # last study of a batch runs alone, and its networks read faster).
        lines += ["Hypervolume with one timing a network (every network of a seed timed again after the studies, "
                  "alone on the machine, in passes of a shuffled order, the median of the passes; see `retime()`):",
                  "",
                  "| method | hypervolume, mean | per seed | min | max | networks timed again, a seed | passes | "
                  "passes apart, median | study's own ratio off by, median |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for method, by_seed in results.items():
            hv = [r["retimed"]["hypervolume"] for r in by_seed.values()]
            lines.append(f"| {method} | {statistics.mean(hv):.4f} | {_per_seed(hv)} | {min(hv):.4f} | {max(hv):.4f} | "
                         f"{statistics.mean(r['retimed']['networks'] for r in by_seed.values()):.0f} | "
                         f"{min(r['retimed']['passes'] for r in by_seed.values())} | "
                         f"{100 * statistics.median(r['retimed']['spread_median'] for r in by_seed.values()):.1f}% | "
                         f"{100 * statistics.median(r['retimed']['drift_median'] for r in by_seed.values()):.1f}% |")
        lines += ["", "The same studies with each study's own timings (taken while the other studies of the batch "
                  "trained beside it):", ""]
    lines += [
        "| method | hypervolume, mean | per seed | min | max | feasible front, mean | stopped early, mean | "
        "latency reused, mean | minutes a study, mean | sampler(s) used |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, by_seed in results.items():
        hv = [r["hypervolume"] for r in by_seed.values()]
        used = sorted({s for r in by_seed.values() for s in r["samplers"]})
        lines.append(f"| {method} | {statistics.mean(hv):.4f} | {_per_seed(hv)} | {min(hv):.4f} | {max(hv):.4f} | "
                     f"{statistics.mean(r['front'] for r in by_seed.values()):.1f} | "
                     f"{statistics.mean(r['stopped_early'] for r in by_seed.values()):.1f} | "
                     f"{statistics.mean(r.get('latency_reused', 0) for r in by_seed.values()):.1f} | "
                     f"{statistics.mean(r['seconds'] for r in by_seed.values()) / 60:.1f} | {', '.join(used) or '-'} |")
    timings = "one timing a network" if retimed else "each study's own timings"
    for method in (m for m in results if m.startswith("auto")):
        whose = "the default sampler's studies" if method == "auto" else f"the `{method}` studies"
        lines += ["", f"Uniform references of {whose}, and the best front point that dominates each",
                  "(smallest such point, a searched one where there is one; accuracy, bytes as % of the teacher, "
                  f"latency ratio), with {timings}:", ""]
        if retimed:
            lines += reference_table(results[method], lambda r: r["retimed"]["points"])
            lines += ["", "And with each study's own timings:", ""]
        lines += reference_table(results[method], lambda r: r["points"])
    confirmed = results.get("auto", {})
    if confirmed and all("confirmed" in r for r in confirmed.values()):
        first = next(iter(confirmed.values()))["confirmed"]
        lines += ["", f"The same references of the default sampler's studies with accuracy the mean over "
                  f"{len(first['seeds'])} training seeds (the study's own and {len(first['seeds']) - 1} more): each "
                  f"reference, and every feasible point at least as small and fast as one ({timings}) and at most "
                  f"{first['margin']:.4f} less accurate than it under the study's seed, trained again (see "
                  "`_confirm.py`); the points of the table are those:", ""]
        lines += reference_table(confirmed, lambda r: [dataclasses.asdict(p) for p in remeasured(
            judged_points(r), {int(k): v for k, v in r["confirmed"]["accuracy"].items()})])
        lines += ["", "| seed | reference | accuracy a training seed | plans within reach, trained again |",
                  "|---:|---|---|---:|"]
        for seed, r in confirmed.items():
            c = r["confirmed"]
            drawn = {p.number: p.accuracy for p in judged_points(r)}
            labels = {int(k): v for k, v in r["references"].items()}
            for ref, reach in c["reach"].items():
                draws = [drawn[int(ref)], *c["accuracy"][ref]]
                lines.append(f"| {seed} | {labels[int(ref)]} | {', '.join(f'{a:.4f}' for a in draws)} | "
                             f"{len(reach)} |")
        lines += ["", "The same verdict with the training noise stated: a point counts when it is at least as small "
                  "and fast, better in one of the two, and its mean accuracy is at most one standard error of the "
                  "paired difference (the same training seeds, seed by seed) below the reference's; a second "
                  "reading beside the strict one above, see `_confirm.py`:", ""]
        lines += noise_table(confirmed)
    return "\n".join(lines) + "\n"


def noise_table(by_seed: dict[int, dict]) -> list[str]:
    """Rows of the reference verdict read within one standard error of the paired accuracy difference."""
    lines = ["| seed | reference | reference point (mean) | counted point (mean) | difference, mean ± standard error |",
             "|---:|---|---|---|---|"]
    tally = {"references": 0, "dominated": 0, "searched": 0}
    for seed, r in by_seed.items():
        c = r["confirmed"]
        teacher_bytes = r["teacher"]["size_bytes"]
        labels = {int(k): v for k, v in r["references"].items()}
        uniform = _uniform(r)
        own = judged_points(r)
        draws = {p.number: [p.accuracy, *c["accuracy"][str(p.number)]] for p in own if str(p.number) in c["accuracy"]}
        means = {p.number: p for p in remeasured(own, {int(k): v for k, v in c["accuracy"].items()})}
        reach = {int(k): v for k, v in c["reach"].items()}
        for ref, found in within_noise(own, draws, reach, prefer=lambda p: p.number not in uniform).items():
            tally["references"] += 1
            by, diff = "none", "-"
            if found is not None:
                point, d = found
                tally["dominated"] += 1
                tally["searched"] += point.number not in uniform
                by = f"trial {point.number}{'' if point.number not in uniform else ' (uniform)'}: " \
                     f"{_fmt(means[point.number], teacher_bytes)}"
                diff = f"{d.mean:+.4f} ± {d.se:.4f}"
            lines.append(f"| {seed} | {labels[ref]} | {_fmt(means[ref], teacher_bytes)} | {by} | {diff} |")
    return lines + ["", f"References beaten with accuracy read within one standard error: {tally['dominated']} of "
                        f"{tally['references']}; by a searched (non-uniform) point: {tally['searched']} of "
                        f"{tally['references']}."]


def _uniform(r: dict) -> set[int]:
    """A study's uniform policies: its references, the auto sampler's anchors, and a reference's plan drawn again."""
    return {int(k) for key in ("references", "same_policy", "anchors") for k in r.get(key, {})}


def _per_seed(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def reference_table(by_seed: dict[int, dict], points_of) -> list[str]:
    """Rows of the reference table for one method's studies; ``points_of`` picks the points to judge with."""
    lines = ["| seed | reference | reference point | dominated by |", "|---:|---|---|---|"]
    tally = {"references": 0, "dominated": 0, "searched": 0}
    for seed, r in by_seed.items():
        teacher_bytes = r["teacher"]["size_bytes"]
        labels = {int(k): v for k, v in r["references"].items()}
        again = {int(k): v for k, v in r.get("same_policy", {}).items()}
        anchors = {int(k): v for k, v in r.get("anchors", {}).items()}
        pts = [dataclasses.replace(Point(**p), reference=p["number"] in labels) for p in points_of(r)]
        # A searched (per-layer) point is the claim; a uniform policy (a reference, an anchor, or a
        # reference's plan drawn again) is said as such.
        uniform = _uniform(r)
        for ref, best in references_beaten(pts, prefer=lambda p: p.number not in uniform):
            searched = best is not None and best.number not in uniform
            tally["references"] += 1
            tally["dominated"] += best is not None
            tally["searched"] += searched
            by = "none"
            if best is not None:
                what = ("" if searched else " (a uniform reference)" if best.number in labels
                        else f" (an anchor, {anchors[best.number]})" if best.number in anchors
                        else f" ({again[best.number]} drawn again)")
                by = f"trial {best.number}{what}: {_fmt(best, teacher_bytes)}"
            lines.append(f"| {seed} | {labels[ref.number]} | {_fmt(ref, teacher_bytes)} | {by} |")
    return lines + ["", f"References dominated: {tally['dominated']} of {tally['references']}; by a searched "
                        f"(non-uniform) point: {tally['searched']} of {tally['references']}."]


def _fmt(p: Point, teacher_bytes: int) -> str:
    return f"{p.accuracy:.4f}, {100 * p.size_bytes / teacher_bytes:.1f}%, {p.latency_ratio:.2f}x"


def draw_history(results: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # With one timing a network where the studies were timed again (the fair comparison, see retime()).
    retimed = all("retimed" in r for by_seed in results.values() for r in by_seed.values())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    means = []
    for method, by_seed in results.items():
        runs = [h for r in by_seed.values() if (h := (r["retimed"] if retimed else r)["history"])]
        if not runs:
            continue
        n = max(len(h) for h in runs)
        padded = [h + [h[-1]] * (n - len(h)) for h in runs]
        mean = [statistics.mean(col) for col in zip(*padded)]
        means.append(mean)
        ax.plot(range(1, n + 1), mean, label=method)
        ax.fill_between(range(1, n + 1), [min(c) for c in zip(*padded)], [max(c) for c in zip(*padded)], alpha=0.15)
    if means:
        # The first trials climb from 0; the methods differ in the last hundredths, so the axis starts
        # where every method stands after ten trials.
        low = min(m[min(9, len(m) - 1)] for m in means)
        ax.set_ylim(low - 0.01, max(max(m) for m in means) + 0.01)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume (teacher-normalised)")
    ax.set_title("Search quality on MNIST: mean and range over seeds"
                 + (", one timing a network" if retimed else ", each study's own timings"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
