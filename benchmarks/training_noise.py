"""Training noise: the plans of chosen trials trained again under other training seeds, side by side.

Every trial of a study trains with the study's one seed, so two plans of a study differ by their
plans and one shared draw of training noise. This retrains the plans of the trials named in
``--trials`` under ``--seeds`` training seeds (the study's own first, then the next integers) with
the study's data, teacher and budget, and scores each on the held-out split. It prints each
plan's accuracy under every seed, and for every plan after the first its difference from the
first (usually a uniform reference) seed by seed: how often the plan ties or beats the first, and by
how much on average. A move that loses to its reference by a few images under the study's seed may
win under most others; then whether the study's front holds a point that dominates the reference
is a draw of training noise, not a property of the search.

``--move TRIAL:PARAM=VALUE,...`` (repeatable) adds a plan the study may never have tried: trial
TRIAL's parameters with those changed, for example a uniform reference with its first and last
layers at 8 bits and its largest one at 3. So one can ask how much any per-layer change of a
reference gains over several seeds, and whether a reference can be beaten at all.

Latency is not measured again where the study timed the same network (the study's measurement is
reused; a changed network is timed here once, and marked), and nothing is written to the study.

    python benchmarks/training_noise.py benchmarks/results/studies/auto-s0.toml --trials 0,21,46,57 --seeds 6
    python benchmarks/training_noise.py benchmarks/results/studies/auto-s0.toml --trials 1 --seeds 8 \
        --move 1:bits.stages.0.0.conv=8,bits.classifier=8,bits.stages.2.0.conv=3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import optuna
import torch

from _retrain import Retrained, moved, own_seed
from squeeze.search import Point, load_spec
from squeeze.search import dominates
from squeeze.spaces import SqueezeError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="the study file (.toml) of an existing study")
    parser.add_argument("--trials", required=True, help="trial numbers, comma-separated; the others are compared with the first")
    parser.add_argument("--move", action="append", default=[], metavar="TRIAL:PARAM=VALUE,...",
                        help="also trial TRIAL's plan with these parameters changed (repeatable)")
    parser.add_argument("--seeds", type=int, default=6, help="training seeds a plan, the study's own first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as each study of the search-quality benchmark trains)")
    args = parser.parse_args()
    try:
        numbers = [int(n) for n in args.trials.split(",")]
    except ValueError:
        parser.error(f"--trials must be trial numbers separated by commas, but got {args.trials!r}.")
    plans: list[tuple[int, dict[str, str]]] = [(n, {}) for n in numbers]
    for text in args.move:
        plan = _parse_move(text)
        if plan is None:
            parser.error(f"--move must read TRIAL:PARAM=VALUE[,PARAM=VALUE...] (for example "
                         f"1:bits.classifier=8,bits.stages.2.0.conv=3), but got {text!r}.")
        plans.append(plan)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, but got {args.seeds}.")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, but got {args.threads}.")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    labels = [_label(n, changes) for n, changes in plans]

    def progress(index: int, scores: Retrained) -> None:
        print(f"[{index + 1}/{len(plans)}, {time.perf_counter() - started:.0f} s] {labels[index]}: "
              f"{', '.join(f'{a:.4f}' for a in scores.accuracy)}", file=sys.stderr, flush=True)

    try:
        own = own_seed(args.study)
        seeds = [own + i for i in range(args.seeds)]
        scores = moved(args.study, plans, seeds, progress=progress)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = load_spec(args.study)
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}

    print(f"Study {spec.study.name!r}, training seeds {', '.join(map(str, seeds))} (the study's own: {own}); "
          f"held-out accuracy.\n")
    print("| plan | what it is | study's accuracy | accuracy a seed | mean | bytes | latency ratio "
          "| against the first: seeds at least as good | mean difference | dominates the first, on the means |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    first = scores[0]
    for (number, changes), label, got in zip(plans, labels, scores):
        diffs = [a - b for a, b in zip(got.accuracy, first.accuracy)]
        later = got is not first
        versus = f"{sum(d >= -1e-9 for d in diffs)} of {len(diffs)}" if later else ""
        # Rounded first, so that a tie of the means reads +0.0000, not -0.0000.
        mean_diff = f"{round(statistics.fmean(diffs), 9) + 0.0:+.4f}" if later else ""
        study_acc = "" if changes else f"{done[number].values[0]:.4f}"
        latency = f"{got.latency_ratio:.3f}" + ("" if got.latency_reused else " (timed here)")
        print(f"| {label} | {'a change of ' if changes else ''}{_describe(done[number])} "
              f"| {study_acc} | {', '.join(f'{a:.4f}' for a in got.accuracy)} | {statistics.fmean(got.accuracy):.4f} "
              f"| {got.size_bytes} | {latency} | {versus} | {mean_diff} | {_dominates(got, first) if later else ''} |")
    return 0


def _parse_move(text: str) -> tuple[int, dict[str, str]] | None:
    """``"TRIAL:PARAM=VALUE,..."`` as (trial, {param: value}), or None when it does not read so."""
    trial, sep, rest = text.partition(":")
    if not sep or not trial.strip().isdigit() or not rest.strip():
        return None
    changes = {}
    for item in rest.split(","):
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            return None
        changes[name.strip()] = value.strip()
    return int(trial), changes


def _label(number: int, changes: dict[str, str]) -> str:
    if not changes:
        return f"trial {number}"
    return f"trial {number} with " + ", ".join(f"{k}={v}" for k, v in changes.items())


def _dominates(plan: Retrained, first: Retrained) -> str:
    """Whether ``plan`` dominates ``first`` with accuracy the mean over the seeds (see ``squeeze.search._pareto.dominates``)."""
    def point(scores: Retrained) -> Point:
        # Means of the same number of held-out scores: equal sums are a tie, not a rounding.
        return Point(number=0, accuracy=round(statistics.fmean(scores.accuracy), 9), size_bytes=scores.size_bytes,
                     latency_ratio=scores.latency_ratio)

    a, b = point(plan), point(first)
    if not dominates(a, b):
        return "no"
    return "yes, with equal accuracy" if a.accuracy == b.accuracy else "yes"


def _describe(trial: optuna.trial.FrozenTrial) -> str:
    attrs = trial.user_attrs
    if "reference" in attrs:
        return str(attrs["reference"])
    if "local_move" in attrs:
        return f"trial {attrs['local_from']} with {attrs['local_move']}"
    return "a sampled plan"


if __name__ == "__main__":
    sys.exit(main())
