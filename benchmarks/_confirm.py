"""The reference verdict of the search-quality benchmark, with accuracy over several training seeds.

Every trial of a study trains with the study's one seed. Near a uniform reference, that one draw
of training noise decides the verdict: on an Intel Xeon run, seed 0's uniform 8-bit reference at
sparsity 0 drew 0.9780 (0.9755 to 0.9795 under six training seeds), and the five moves that kept its
network and had fewer bytes each lost 2 to 5 of the 2,000 held-out images under the study's seed
but tied or beat it under 1 to 4 of the six (``benchmarks/results/training_noise-auto-s0.md``).
A verdict from one draw then says which plan was luckier, as a verdict from one timing said which
network ran under less load (``retime()`` in ``search_quality.py``). And the points that beat a
reference on the study's draw were picked from many by that draw: on an AMD EPYC run, seed 0's
trial 21 drew 0.9770 against the references' 0.9760, and over five training seeds it averages
0.9729 against their 0.9766 and 0.9758.

So, as latency is timed again, accuracy is measured again for the plans the verdict turns on: each
reference, and every other feasible point at least as small and as fast as a reference (with the
retimed latencies) that is at most ``margin`` less accurate than it under the study's seed. Each of
these plans is trained again under ``seeds - 1`` more training seeds (the study's seed plus one,
plus two, ...), with the study's data, teacher and budget, and takes the mean of its accuracies
(the study's own draw and the new ones). A point further than ``margin`` below a reference (ten
images by default, several times the spread of the difference between two plans' draws) is left
as it is, as is every point far from a reference; the hypervolume is not changed.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path

import torch

from _retrain import own_seed, retrained
from squeeze.search import Point


def within_reach(points: Sequence[Point], *, margin: float, skip: Set[int] = frozenset()) -> dict[int, list[int]]:
    """For each reference among ``points``, the other feasible points that could dominate it under other seeds.

    Those at least as small and as fast, and at most ``margin`` less accurate; trials in ``skip``
    (a reference's own plan drawn again, which trains exactly as the reference does) are left out.
    """
    reach = {}
    for ref in (p for p in points if p.reference):
        reach[ref.number] = [p.number for p in points
                             if p.number != ref.number and p.feasible and p.number not in skip
                             and p.size_bytes <= ref.size_bytes and p.latency_ratio <= ref.latency_ratio
                             and p.accuracy >= ref.accuracy - margin - 1e-12]
    return reach


def plans_to_train(reach: Mapping[int, Sequence[int]]) -> list[int]:
    """The references and every point within their reach, each once, in order."""
    return sorted({*reach, *(n for numbers in reach.values() for n in numbers)})


def train_one(study_file: str, number: int, seeds: Sequence[int]) -> list[float]:
    """Trial ``number``'s plan trained under each of ``seeds``, on one thread."""
    torch.set_num_threads(1)
    return retrained(study_file, [number], seeds)[number]


def remeasured(points: Sequence[Point], accuracies: Mapping[int, Sequence[float]]) -> list[Point]:
    """The points whose plans were trained again, each with the mean of its study draw and its new draws."""
    return [dataclasses.replace(p, accuracy=statistics.fmean([p.accuracy, *accuracies[p.number]]))
            for p in points if p.number in accuracies]


def confirm(study_files: Mapping[int, Path], points_of: Mapping[int, Sequence[Point]], *, seeds: int,
            margin: float, skip: Mapping[int, set[int]], submit: Callable) -> dict[int, dict]:
    """Train the plans the verdict turns on again, for every study seed; ``submit`` is a pool's ``submit``.

    Returns, per study seed, what the report needs: the training seeds, the margin, which points
    were within reach of which reference, and every trained plan's new accuracies.
    """
    reach = {seed: within_reach(points_of[seed], margin=margin, skip=skip.get(seed, set())) for seed in study_files}
    training = {seed: [own_seed(path) + i for i in range(seeds)] for seed, path in study_files.items()}
    # The study's own seed is not trained again: training is deterministic, and its draw is the study's figure.
    jobs = {(seed, n): submit(train_one, str(study_files[seed]), n, training[seed][1:])
            for seed in study_files for n in plans_to_train(reach[seed])}
    print(f"accuracy over {seeds} training seeds: {len(jobs)} plans, {len(jobs) * (seeds - 1)} trainings", flush=True)
    out: dict[int, dict] = {}
    for seed in study_files:
        out[seed] = {
            "seeds": training[seed],
            "margin": margin,
            "reach": {str(ref): numbers for ref, numbers in reach[seed].items()},
            "accuracy": {str(n): job.result() for (s, n), job in jobs.items() if s == seed},
        }
        print(f"seed {seed}: {len(out[seed]['accuracy'])} plans trained again", flush=True)
    return out
