"""Training noise: the plans of chosen trials trained again under other training seeds, side by side.

Every trial of a study trains with the study's one seed, so two plans of a study differ by their
plans and one shared draw of training noise. This retrains the plans of the trials named in
``--trials`` under ``--seeds`` training seeds (the study's own first, then the next integers) with
the study's data, teacher and budget, and scores each on the held-out split. It prints each
plan's accuracy under every seed, and for every trial after the first its difference from the
first (usually a uniform reference) seed by seed: how often the plan ties or beats the first, and by
how much on average. A move that loses to its reference by a few images under the study's seed may
win under most others; then whether the study's front holds a point that dominates the reference
is a draw of training noise, not a property of the search.

Latency is not measured again (the study's own measurement of each network is reused), and
nothing is written to the study.

    python benchmarks/training_noise.py benchmarks/results/studies/auto-s0.toml --trials 0,21,46,57 --seeds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import optuna
import torch

from squeeze.objectives import evaluate_plan
from squeeze.search._api import prepare, resolve
from squeeze.search._latencies import LatencyBook
from squeeze.search._study import connect, ensure_teacher, training_seed
from squeeze.spaces import JointSpace, SqueezeError, get_family


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the study file (.toml) of an existing study")
    parser.add_argument("--trials", required=True, help="trial numbers, comma-separated; the others are compared with the first")
    parser.add_argument("--seeds", type=int, default=6, help="training seeds a plan, the study's own first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as each study of the search-quality benchmark trains)")
    args = parser.parse_args()
    try:
        numbers = [int(n) for n in args.trials.split(",")]
    except ValueError:
        parser.error(f"--trials must be trial numbers separated by commas, but got {args.trials!r}.")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, but got {args.seeds}.")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, but got {args.threads}.")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec = resolve(args.study).spec
        if spec is None:
            raise SqueezeError(f"{args.study!r} is not a study file; give the .toml the study was created with.")
        data = prepare(spec)
        ctx = connect(spec, create=False)
        teacher = ensure_teacher(ctx, data)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    missing = [n for n in numbers if n not in done]
    if missing:
        print(f"error: --trials names {missing}, which are not completed trials of study {spec.study.name!r}.",
              file=sys.stderr)
        return 2
    family = get_family(spec.task.family)
    space = JointSpace(family, spec.task.model, spec.space, teacher=teacher.model)
    book = LatencyBook()
    own = training_seed(spec)
    seeds = [own + i for i in range(args.seeds)]
    scores: dict[int, list[float]] = {}
    started = time.perf_counter()
    for i, number in enumerate(numbers):
        trial = done[number]
        plan = space.plan_for(trial.params, in_channels=data.in_channels, num_classes=data.num_classes)
        scores[number] = []
        for seed in seeds:
            judged = evaluate_plan(
                plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=family,
                options=spec.task.model, data=data, budget=spec.training, compress=spec.compress,
                latency=spec.latency, seed=seed, device=spec.task.device,
                known_latency=lambda key: book.measured(study, key),
            )
            scores[number].append(judged.accuracy)
        print(f"[{i + 1}/{len(numbers)}, {time.perf_counter() - started:.0f} s] trial {number} "
              f"(study: {trial.values[0]:.4f}): {_describe(trial)}", file=sys.stderr, flush=True)

    print(f"Study {spec.study.name!r}, training seeds {', '.join(map(str, seeds))} (the study's own: {own}); "
          f"held-out accuracy.\n")
    print("| trial | plan | study's accuracy | accuracy a seed | mean | against the first: seeds at least as good | mean difference |")
    print("|---:|---|---:|---|---:|---:|---:|")
    first = numbers[0]
    for number in numbers:
        acc = scores[number]
        diffs = [a - b for a, b in zip(acc, scores[first])]
        versus = ("" if number == first else f"{sum(d >= -1e-9 for d in diffs)} of {len(diffs)}")
        mean_diff = "" if number == first else f"{statistics.fmean(diffs):+.4f}"
        print(f"| {number} | {_describe(done[number])} | {done[number].values[0]:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in acc)} | {statistics.fmean(acc):.4f} | {versus} | {mean_diff} |")
    return 0


def _describe(trial: optuna.trial.FrozenTrial) -> str:
    attrs = trial.user_attrs
    if "reference" in attrs:
        return str(attrs["reference"])
    if "local_move" in attrs:
        return f"trial {attrs['local_from']} with {attrs['local_move']}"
    return "a sampled plan"


if __name__ == "__main__":
    sys.exit(main())
