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

Every plan of a study is trained again under the same training seeds, so a point's draws and its
reference's pair up seed by seed, and their difference has a standard error (``paired()``). Near
the 8-bit references that difference is a tie in expectation (``benchmarks/results/reference_moves.md``):
nothing within int8 is more accurate than 8 bits everywhere, so a smaller plan can at best match
it, and the sign of a mean difference of zero is then the coin that decides the strict verdict.
``within_noise()`` gives the verdict once more with that error stated: a point counts when it is at
least as small and as fast, better in one of the two, and its mean accuracy is no more than one
standard error of the paired difference below the reference's. This is a second reading beside
the strict one, not a replacement: the report gives both.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path

import torch

from _retrain import own_seed, retrained
from squeeze.search import Point
from squeeze.search import dominates


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


@dataclasses.dataclass(frozen=True)
class Paired:
    """A point against a reference over the same training seeds: mean accuracy difference and its standard error."""

    mean: float
    se: float


def paired(point: Sequence[float], reference: Sequence[float]) -> Paired | None:
    """The seed-by-seed difference ``point - reference``; None with fewer than two seeds (no error to state)."""
    if len(point) != len(reference):
        raise ValueError(f"paired draws need the same training seeds, but got {len(point)} and {len(reference)} draws")
    if len(point) < 2:
        return None
    diff = [a - b for a, b in zip(point, reference)]
    return Paired(mean=statistics.fmean(diff), se=statistics.stdev(diff) / len(diff) ** 0.5)


def within_noise(points: Sequence[Point], draws: Mapping[int, Sequence[float]], reach: Mapping[int, Sequence[int]], *,
                 prefer: Callable[[Point], bool]) -> dict[int, tuple[Point, Paired] | None]:
    """For each reference, the smallest point within reach that beats it once accuracy is read within one standard error.

    ``draws`` holds every trained plan's accuracies in training-seed order (the study's draw first).
    A point counts when its bytes and latency are at most the reference's with one of them
    smaller, or both equal and its mean accuracy higher, and its mean accuracy is at most one
    standard error of the paired difference below the reference's. ``prefer`` picks, as in
    ``references_beaten``, a searched point over a uniform one where both count.
    """
    by_number = {p.number: p for p in points}
    out: dict[int, tuple[Point, Paired] | None] = {}
    for ref_number, numbers in reach.items():
        ref = by_number[ref_number]
        counted = []
        for n in numbers:
            diff = paired(draws[n], draws[ref_number])
            if diff is None or diff.mean < -diff.se - 1e-12:
                continue
            # Within the noise, the point is credited with the reference's accuracy (or its lead
            # where it is ahead), and dominance decides the rest.
            credited = dataclasses.replace(by_number[n], accuracy=ref.accuracy + max(diff.mean, 0.0))
            if dominates(credited, ref):
                counted.append((by_number[n], diff))
        preferred = [c for c in counted if prefer(c[0])]
        out[ref_number] = min(preferred or counted, key=lambda c: (c[0].size_bytes, c[0].number)) if counted else None
    return out


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
