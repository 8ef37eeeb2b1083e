"""Plans of a study's trials trained again under other training seeds (shared by the benchmarks).

Every trial of a study trains with the study's one seed, so two plans of a study differ by their
plans and by one shared draw of training noise; a plan trained again under another seed scores
otherwise, by a few held-out images. This trains the plans of chosen trials again with the study's
data, teacher and budget under other seeds and scores each on the held-out split. Latency is not
measured again (each network's measurement in the study is reused), and nothing is written to the
study, so the figures do not depend on what else runs on the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import optuna

from squeeze.objectives import evaluate_plan
from squeeze.search._api import prepare, resolve
from squeeze.search._latencies import LatencyBook
from squeeze.search._study import connect, ensure_teacher, training_seed
from squeeze.spaces import JointSpace, SqueezeError, get_family


def own_seed(study_file: str | Path) -> int:
    """The training seed of the study created from ``study_file``."""
    return training_seed(_spec(study_file))


def retrained(study_file: str | Path, numbers: Sequence[int], seeds: Sequence[int], *,
              progress: Callable[[int, list[float]], None] | None = None) -> dict[int, list[float]]:
    """Held-out accuracy of each completed trial in ``numbers``, its plan trained under each of ``seeds``.

    ``progress`` is called with a trial's number and its accuracies once it is done. Raises
    :class:`SqueezeError` naming the trials that are not completed trials of the study.
    """
    spec = _spec(study_file)
    data = prepare(spec)
    ctx = connect(spec, create=False)
    teacher = ensure_teacher(ctx, data)
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    missing = [n for n in numbers if n not in done]
    if missing:
        raise SqueezeError(f"trials {missing} are not completed trials of study {spec.study.name!r}.")
    family = get_family(spec.task.family)
    space = JointSpace(family, spec.task.model, spec.space, teacher=teacher.model)
    book = LatencyBook()
    scores: dict[int, list[float]] = {}
    for number in numbers:
        plan = space.plan_for(done[number].params, in_channels=data.in_channels, num_classes=data.num_classes)
        scores[number] = [
            evaluate_plan(
                plan, teacher=teacher.model, teacher_deployed=teacher.deployed, family=family,
                options=spec.task.model, data=data, budget=spec.training, compress=spec.compress,
                latency=spec.latency, seed=seed, device=spec.task.device,
                known_latency=lambda key: book.measured(study, key),
            ).accuracy
            for seed in seeds
        ]
        if progress is not None:
            progress(number, scores[number])
    return scores


def _spec(study_file: str | Path):
    spec = resolve(str(study_file)).spec
    if spec is None:
        raise SqueezeError(f"{str(study_file)!r} is not a study file; give the .toml the study was created with.")
    return spec
