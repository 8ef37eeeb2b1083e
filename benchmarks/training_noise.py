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

from _retrain import own_seed, retrained
from squeeze.search import load_spec
from squeeze.spaces import SqueezeError


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
    started = time.perf_counter()
    names = {}

    def progress(number: int, accuracies: list[float]) -> None:
        names[number] = len(names) + 1
        print(f"[{names[number]}/{len(numbers)}, {time.perf_counter() - started:.0f} s] trial {number}: "
              f"{', '.join(f'{a:.4f}' for a in accuracies)}", file=sys.stderr, flush=True)

    try:
        own = own_seed(args.study)
        seeds = [own + i for i in range(args.seeds)]
        scores = retrained(args.study, numbers, seeds, progress=progress)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = load_spec(args.study)
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}

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
