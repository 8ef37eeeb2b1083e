from __future__ import annotations

import optuna
import pytest
from squeeze.search.samplers import SAMPLERS, make_sampler, startup_trials
from squeeze.spaces import SqueezeError


def _objective(params: int = 25):
    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        xs = [trial.suggest_categorical(f"p{i}", [0, 1, 2, 3]) for i in range(params)]
        third = params // 3
        return sum(xs[:third]) / (3 * third), float(sum(xs[third : 2 * third])), float(sum(xs[2 * third :]))

    return objective


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_and_records_its_cost(name: str) -> None:
    # Few parameters and a budget just past the start-up trials: GP's fit grows fast with both.
    sampler = make_sampler(name, seed=0, trials=8)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.optimize(_objective(params=6), n_trials=7)
    trials = study.get_trials()
    assert len(trials) == 7
    assert all(t.user_attrs["sampler_ms"] >= 0 for t in trials)
    assert all(t.user_attrs["sampler"] in SAMPLERS for t in trials)


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(SqueezeError, match="`study.sampler` must be one of"):
        make_sampler("cmaes", seed=0, trials=10)


def test_auto_is_tpe_modelling_each_parameter_alone() -> None:
    # The default (docs/samplers.md says why): Optuna's TPE, independent, seeded and sized as every sampler is.
    def run(sampler: optuna.samplers.BaseSampler) -> list[optuna.trial.FrozenTrial]:
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
        study.enqueue_trial({f"p{i}": 3 for i in range(6)})
        study.optimize(_objective(params=6), n_trials=12)
        return study.get_trials()

    auto = run(make_sampler("auto", seed=3, trials=20))
    plain = run(optuna.samplers.TPESampler(seed=3, n_startup_trials=startup_trials(20), constant_liar=True))
    joint = run(make_sampler("tpe", seed=3, trials=20))
    assert [t.params for t in auto] == [t.params for t in plain]
    assert [t.params for t in auto] != [t.params for t in joint]
    assert {t.user_attrs["sampler"] for t in auto} == {"auto"}


@pytest.mark.parametrize(("trials", "expected"), [(8, 5), (40, 10), (60, 15), (200, 20)])
def test_start_up_trials_are_a_quarter_of_the_budget_from_5_to_20(trials: int, expected: int) -> None:
    assert startup_trials(trials) == expected
