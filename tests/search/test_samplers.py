from __future__ import annotations

import time

import optuna
import pytest

from squeeze.search._samplers import AutoSampler, list_samplers, make_sampler
from squeeze.spaces import SqueezeError


def _objective(delay: float, params: int = 25):
    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        xs = [trial.suggest_categorical(f"p{i}", [0, 1, 2, 3]) for i in range(params)]
        time.sleep(delay)
        third = params // 3
        return sum(xs[:third]) / (3 * third), float(sum(xs[third : 2 * third])), float(sum(xs[2 * third :]))

    return objective


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_runs_and_records_its_cost(name: str) -> None:
    # Few parameters and a budget just past the start-up trials: GP's fit grows fast with both.
    sampler = make_sampler(name, seed=0, trials=8)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.optimize(_objective(0.0, params=6), n_trials=7)
    trials = study.get_trials()
    assert len(trials) == 7
    assert all(t.user_attrs["sampler_ms"] >= 0 for t in trials)
    assert all(t.user_attrs["sampler"] in list_samplers() for t in trials)


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(SqueezeError, match="`study.sampler` must be one of"):
        make_sampler("cmaes", seed=0, trials=10)


def test_auto_hands_over_when_the_sampler_costs_more_than_its_share() -> None:
    # Trials that take no time at all: TPE's milliseconds are far above 5% of them.
    sampler = AutoSampler(seed=0, trials=40, window=5)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.optimize(_objective(0.0), n_trials=25)
    names = [t.user_attrs["sampler"] for t in study.get_trials()]
    assert names[0] == "tpe" and names[-1] == "nsga2"


def test_auto_keeps_tpe_while_it_is_cheap_beside_a_trial() -> None:
    sampler = AutoSampler(seed=0, trials=40, window=5)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.optimize(_objective(0.4), n_trials=12)
    assert {t.user_attrs["sampler"] for t in study.get_trials()} == {"tpe"}


def test_auto_moves_front_points_one_step_after_the_start_up_trials() -> None:
    sampler = AutoSampler(seed=0, trials=40, local=1.0)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.enqueue_trial({f"p{i}": 3 for i in range(6)})
    study.optimize(_objective(0.0, params=6), n_trials=12)
    study.enqueue_trial({f"p{i}": 0 for i in range(6)})
    study.optimize(_objective(0.0, params=6), n_trials=12)
    trials = study.get_trials()
    moves = [t for t in trials if "local_from" in t.user_attrs]
    startup = 10  # a quarter of 40
    assert all("local_from" not in t.user_attrs for t in trials[:startup]), "the start-up trials are the model's"
    assert "local_from" not in trials[12].user_attrs and trials[12].params == {f"p{i}": 0 for i in range(6)}
    assert len(moves) == len(trials) - startup - 1
    seen: set[tuple] = set()
    for t in trials:
        key = tuple(sorted(t.params.items()))
        assert key not in seen, "a move never repeats a plan already tried"
        seen.add(key)
    for t in moves:
        parent = trials[t.user_attrs["local_from"]]
        changed = {k for k in t.params if t.params[k] != parent.params[k]}
        assert len(changed) == 1, t.user_attrs["local_move"]
        (name,) = changed
        assert abs(t.params[name] - parent.params[name]) == 1, "one step, to the next choice"
        assert t.user_attrs["local_move"].startswith(f"{name}: ")
        # The parent was on the front of the trials finished before the move started.
        earlier = [o for o in trials if o.number < t.number and o.datetime_complete and o.datetime_complete <= t.datetime_start]
        assert not any(
            o.values[0] >= parent.values[0] and o.values[1] <= parent.values[1] and o.values[2] <= parent.values[2]
            and o.values != parent.values for o in earlier
        )


def test_auto_shrinks_a_reference_on_the_front_before_other_moves() -> None:
    layers = range(3)

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        bits = [trial.suggest_categorical(f"bits.l{i}", [2, 4, 8, 32]) for i in layers]
        sparsity = [trial.suggest_categorical(f"sparsity.l{i}", [0.0, 0.25, 0.5]) for i in layers]
        # Accuracy peaks at 8 bits everywhere and no sparsity, so that reference is never dominated.
        accuracy = sum(min(b, 8) for b in bits) - 10 * sum(sparsity)
        size = sum(b * (1 - s) for b, s in zip(bits, sparsity))
        return accuracy, size, sum(1 - s for s in sparsity) + sum(b > 8 for b in bits)

    sampler = AutoSampler(seed=0, trials=40, local=1.0)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    reference = {f"bits.l{i}": 8 for i in layers} | {f"sparsity.l{i}": 0.0 for i in layers}
    study.enqueue_trial(reference, user_attrs={"reference": "uniform 8-bit, sparsity 0"})
    study.optimize(objective, n_trials=20)
    trials = study.get_trials()
    moves = [t for t in trials if "local_from" in t.user_attrs]
    assert len(moves) == 10  # every trial after the 10 start-up ones
    # The reference's six shrinking moves come first: the three that keep its network, then the rest.
    assert all(t.user_attrs["local_from"] == 0 for t in moves[:6])
    changed = [next(k for k in t.params if t.params[k] != reference[k]) for t in moves[:6]]
    assert sorted(changed[:3]) == [f"bits.l{i}" for i in layers]
    assert sorted(changed[3:]) == [f"sparsity.l{i}" for i in layers]
    assert all(t.params[name] == (4 if name.startswith("bits") else 0.25) for t, name in zip(moves, changed))
    # With none left, moves go on from any front point.
    assert any(t.user_attrs["local_from"] != 0 for t in moves[6:])
