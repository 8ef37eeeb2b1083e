from __future__ import annotations

import time

import optuna
import pytest

from squeeze.search.samplers import SAMPLERS, AutoSampler, make_sampler
from squeeze.spaces import SqueezeError


def _objective(delay: float, params: int = 25):
    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        xs = [trial.suggest_categorical(f"p{i}", [0, 1, 2, 3]) for i in range(params)]
        time.sleep(delay)
        third = params // 3
        return sum(xs[:third]) / (3 * third), float(sum(xs[third : 2 * third])), float(sum(xs[2 * third :]))

    return objective


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_and_records_its_cost(name: str) -> None:
    # Few parameters and a budget just past the start-up trials: GP's fit grows fast with both.
    sampler = make_sampler(name, seed=0, trials=8)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.optimize(_objective(0.0, params=6), n_trials=7)
    trials = study.get_trials()
    assert len(trials) == 7
    assert all(t.user_attrs["sampler_ms"] >= 0 for t in trials)
    assert all(t.user_attrs["sampler"] in SAMPLERS for t in trials)


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


def _peaked_objective(trial: optuna.Trial) -> tuple[float, float, float]:
    bits = [trial.suggest_categorical(f"bits.l{i}", [2, 4, 8, 32]) for i in range(3)]
    sparsity = [trial.suggest_categorical(f"sparsity.l{i}", [0.0, 0.25, 0.5]) for i in range(3)]
    # Accuracy peaks at 8 bits everywhere and no sparsity, so that reference is never dominated; a
    # step down loses less than a point, so every move is worth a try.
    accuracy = (sum(min(b, 8) for b in bits) - 10 * sum(sparsity)) / 1000
    size = sum(b * (1 - s) for b, s in zip(bits, sparsity))
    return accuracy, size, sum(1 - s for s in sparsity) + sum(b > 8 for b in bits)


_REFERENCE = {f"bits.l{i}": 8 for i in range(3)} | {f"sparsity.l{i}": 0.0 for i in range(3)}
"""The uniform 8-bit plan of ``_peaked_objective``: no move beats it."""


def _unbeaten(n_trials: int, **options) -> list[optuna.trial.FrozenTrial]:
    """The trials of a study that opens with :data:`_REFERENCE`, sampled by ``AutoSampler(seed=0, trials=40)``."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=AutoSampler(seed=0, trials=40, **options))
    study.enqueue_trial(_REFERENCE, user_attrs={"reference": "uniform 8-bit, sparsity 0"})
    study.optimize(_peaked_objective, n_trials=n_trials)
    return study.get_trials()


def test_auto_shrinks_a_reference_on_the_front_in_its_turns() -> None:
    layers = range(3)
    # Every turn is the references' while one has moves left, the model's after.
    trials = _unbeaten(20, local=0.0, refine_share=1.0)
    moves = [t for t in trials if "local_from" in t.user_attrs]
    assert len(moves) == 6 and trials[10:16] == moves  # the trials right after the 10 start-up ones
    assert {t.user_attrs["local_kind"] for t in moves} == {"reference"}
    # The reference's six shrinking moves, in this order: the three that keep its network (a bit
    # step down, at the reference's latency) first, then the sparsity steps, though a bit step
    # costs 0.004 here and a sparsity step 0.0025.
    assert all(t.user_attrs["local_from"] == 0 for t in moves[:6])
    changed = [next(k for k in t.params if t.params[k] != _REFERENCE[k]) for t in moves[:6]]
    assert sorted(changed[:3]) == [f"bits.l{i}" for i in layers]
    assert sorted(changed[3:]) == [f"sparsity.l{i}" for i in layers]
    assert all(t.params[name] == (4 if name.startswith("bits") else 0.25) for t, name in zip(moves, changed))
    # With none left, the turns are the model's again.
    assert not any("local_from" in t.user_attrs for t in trials[16:])


def test_auto_caps_the_moves_a_reference_gets() -> None:
    # The reference has six shrinking moves and none beats it; it gets three (uncapped, it would
    # take the next three turns too).
    moves = [t for t in _unbeaten(20, local=0.0, refine_share=1.0, refine=3) if "local_from" in t.user_attrs]
    assert [t.user_attrs["local_from"] for t in moves] == [0, 0, 0]


_LUCKY = _REFERENCE | {"bits.l0": 4}
"""A plan that draws high under the study's seed: smaller than ``_REFERENCE`` and, with its luck, more accurate."""


def _lucky_objective(trial: optuna.Trial) -> tuple[float, float, float]:
    accuracy, size, latency = _peaked_objective(trial)
    return accuracy + (0.01 if trial.params == _LUCKY else 0.0), size, latency


def _lucky_study(*references: tuple[dict, str]) -> optuna.Study:
    """``references`` (plan, label) enqueued in order, then ``_LUCKY``; 20 trials of ``_lucky_objective``, 3 moves a reference."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=AutoSampler(seed=0, trials=40, local=0.0, refine_share=1.0, refine=3))
    for plan, label in references:
        study.enqueue_trial(plan, user_attrs={"reference": label})
    study.enqueue_trial(_LUCKY)
    study.optimize(_lucky_objective, n_trials=20)
    return study


def test_a_reference_off_the_front_on_a_lucky_draw_still_gets_its_moves() -> None:
    # The lucky plan puts the reference off the front from the second trial on.
    study = _lucky_study((_REFERENCE, "uniform 8-bit, sparsity 0"))
    assert 0 not in {t.number for t in study.best_trials}
    moves = [t for t in study.get_trials() if t.user_attrs.get("local_from") == 0]
    assert len(moves) == 3 and {t.user_attrs["local_kind"] for t in moves} == {"reference"}


def test_a_reference_no_trial_beats_yet_gets_its_moves_before_a_beaten_one() -> None:
    # The lucky plan beats the 8-bit reference; nothing here beats the 4-bit one, which every
    # smaller plan of ``_peaked_objective`` at best ties.
    four = {f"bits.l{i}": 4 for i in range(3)} | {f"sparsity.l{i}": 0.0 for i in range(3)}
    study = _lucky_study((_REFERENCE, "uniform 8-bit, sparsity 0"), (four, "uniform 4-bit, sparsity 0"))
    parents = [t.user_attrs["local_from"] for t in study.get_trials() if "local_from" in t.user_attrs]
    # The unbeaten reference's three moves first, though the beaten one is older; then the beaten
    # one's, which may still find a plan that beats it by more.
    assert parents == [1, 1, 1, 0, 0, 0]


def test_front_moves_that_draw_a_reference_leave_its_own_moves_alone() -> None:
    trials = _unbeaten(30, local=0.5, refine_share=1.0, refine=3)
    from_reference = [t.user_attrs["local_kind"] for t in trials if t.user_attrs.get("local_from") == 0]
    # The first move after the start-up trials is a front move that drew the reference; it still
    # gets its three moves.
    assert from_reference[0] == "front" and from_reference.count("reference") == 3


def test_reference_moves_take_the_models_turns_and_leave_the_fronts_moves_alone() -> None:
    def kinds(**options) -> list[str]:
        return [t.user_attrs.get("local_kind", "model") for t in _unbeaten(40, **options)[10:]]

    default, none = kinds(), kinds(refine=0)
    # The unbeaten reference gets its moves: five, as a front move that drew it tried the sixth of
    # its shrinking plans first. Without them those turns are the model's, and the front's moves
    # take their half of the trials either way.
    refined = default.count("reference")
    assert refined == 5 and none.count("reference") == 0
    assert default.count("front") == none.count("front") and 10 <= default.count("front") <= 20
    assert default.count("model") == none.count("model") - refined


def _costly(bit_loss: float, sparsity_latency: float):
    """An objective like ``_peaked_objective`` where a bit step down loses ``bit_loss`` accuracy and
    a sparsity step loses 0.002 and changes latency by ``sparsity_latency`` (positive: slower, as a
    layer pruned to a channel count the int8 kernels handle badly)."""

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        bits = [trial.suggest_categorical(f"bits.l{i}", [2, 4, 8, 32]) for i in range(3)]
        sparsity = [trial.suggest_categorical(f"sparsity.l{i}", [0.0, 0.25, 0.5]) for i in range(3)]
        accuracy = 0.9 - bit_loss * sum(b < 8 for b in bits) - 0.008 * sum(sparsity)
        size = sum(b * (1 - s) for b, s in zip(bits, sparsity))
        return accuracy, size, 1 + 4 * sparsity_latency * sum(sparsity) + sum(b > 8 for b in bits)

    return objective


def _reference_moves(objective, **options) -> list[str]:
    """The parameter each move of :data:`_REFERENCE` changed, in order, in a study where every model turn is theirs."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=AutoSampler(seed=0, trials=40, local=0.0, refine_share=1.0, **options))
    study.enqueue_trial(_REFERENCE, user_attrs={"reference": "uniform 8-bit, sparsity 0"})
    study.optimize(objective, n_trials=20)
    moves = [t for t in study.get_trials() if t.user_attrs.get("local_from") == 0]
    return [name for t in moves for name, _, _ in t.user_attrs["local_steps"]]


def test_a_reference_is_not_moved_by_steps_that_made_its_network_slower() -> None:
    # Sparsity steps make the network slower: after the first, no other layer's sparsity step is
    # tried, since a slower plan cannot beat the reference. The bit steps keep the network.
    slower = [name.partition(".")[0] for name in _reference_moves(_costly(0.004, 0.01))]
    assert sorted(slower) == ["bits"] * 3 + ["sparsity"]
    # Where they make it faster, every sparsity step is tried.
    faster = _reference_moves(_costly(0.004, -0.01))
    assert sorted(faster) == [*(f"bits.l{i}" for i in range(3)), *(f"sparsity.l{i}" for i in range(3))]


def test_a_reference_is_not_moved_by_steps_that_lost_more_than_a_point() -> None:
    # The first bit step loses 5 points: the other layers' bit steps are not tried.
    moved = _reference_moves(_costly(0.05, -0.01))
    assert moved[0].startswith("bits.") and sorted(moved[1:]) == [f"sparsity.l{i}" for i in range(3)]
    # With the threshold lifted, they are.
    assert len(_reference_moves(_costly(0.05, -0.01), hopeless=1.0)) == 6


def test_latency_effects_count_finished_one_step_moves() -> None:
    from squeeze.search.samplers._effects import latency_effects

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    make = optuna.trial.create_trial
    study.add_trial(make(params={}, distributions={}, values=[0.9, 10.0, 0.30]))
    for latency in (0.36, 0.34):
        study.add_trial(make(params={}, distributions={}, values=[0.9, 9.0, latency],
                             user_attrs={"local_from": 0, "local_steps": [["sparsity.a", 0.0, 0.25]]}))
    # A trade keeps the network; a move stopped early was never timed.
    study.add_trial(make(params={}, distributions={}, values=[0.9, 9.0, 0.31],
                         user_attrs={"local_from": 0, "local_steps": [["bits.a", 4, 8], ["bits.b", 4, 2]]}))
    study.add_trial(make(params={}, distributions={}, state=optuna.trial.TrialState.PRUNED,
                         user_attrs={"local_from": 0, "local_steps": [["width.a", 1.0, 0.75]]}))
    assert latency_effects(study.get_trials(), objective=2) == pytest.approx({("sparsity.a", 0.0, 0.25): 0.05})


WEIGHTS = {"l0": 10, "l1": 100, "l2": 200, "l3": 400, "l4": 1000}
"""A small first layer and a large last one, as in a CNN."""


def _traded_objective(trial: optuna.Trial) -> tuple[float, float, float]:
    bits = {layer: trial.suggest_categorical(f"bits.{layer}", [2, 4, 8]) for layer in WEIGHTS}
    # The first layer is sensitive to its bit-width, the middle ones break at 2 bits, the last one tolerates 2.
    middle = [bits[f"l{i}"] for i in (1, 2, 3)]
    accuracy = 1 - 0.01 * (8 - bits["l0"]) - sum(0.002 * (8 - b) + 0.05 * (b == 2) for b in middle) - 0.0005 * (8 - bits["l4"])
    trial.set_user_attr("weights", WEIGHTS)
    return accuracy, sum(n * bits[layer] / 8 for layer, n in WEIGHTS.items()), 1.0


def test_auto_trades_bits_between_a_references_layers_where_the_bytes_fall() -> None:
    sampler = AutoSampler(seed=0, trials=20, local=0.0, refine_share=1.0)  # 5 start-up trials
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    reference = {f"bits.{layer}": 4 for layer in WEIGHTS}
    study.enqueue_trial(reference, user_attrs={"reference": "uniform 4-bit"})
    study.optimize(_traded_objective, n_trials=12)
    trials = study.get_trials()
    moves = [t for t in trials if t.user_attrs.get("local_from") == 0]
    assert moves
    for t in moves:
        steps = t.user_attrs["local_steps"]
        # Every move makes the reference smaller; the two-step ones are trades between int8 layers.
        assert t.values[1] < trials[0].values[1]
        if len(steps) == 2:
            (_, a, b), (_, c, d) = steps
            assert b > a and d < c and max(b, d) <= 8
    assert not any(t.values[0] >= trials[0].values[0] and t.values[1] < trials[0].values[1] for t in trials[1:5])
    # Trades go first among moves the study knows nothing against: only they can gain accuracy.
    assert all(len(t.user_attrs["local_steps"]) == 2 for t in moves)
    # No single step down keeps the accuracy; a layer up and a larger one down beats the reference
    # at its own latency.
    beaten = [t for t in moves if t.values[0] >= trials[0].values[0]]
    assert beaten and len(beaten[0].user_attrs["local_steps"]) == 2


ENDS = {"l0": 10, "l1": 100, "l2": 400, "l3": 1000, "l4": 50}
"""In the network's order: a small first layer, a large one before a small classifier."""


def _ends_objective(trial: optuna.Trial) -> tuple[float, float, float]:
    bits = {layer: trial.suggest_categorical(f"bits.{layer}", [2, 3, 4, 8]) for layer in ENDS}
    # Both ends are sensitive to their bit-width; the layers between lose little a step, and break at 2 bits.
    middle = [bits[f"l{i}"] for i in (1, 2, 3)]
    accuracy = 1 - 0.004 * (16 - bits["l0"] - bits["l4"]) - sum(0.0005 * (8 - b) + 0.05 * (b == 2) for b in middle)
    trial.set_user_attr("weights", ENDS)
    return accuracy, sum(n * bits[layer] / 8 for layer, n in ENDS.items()), 1.0


def _ends_parent(bits: dict[str, int], **params) -> optuna.trial.FrozenTrial:
    dist = optuna.distributions.CategoricalDistribution([2, 3, 4, 8])
    space = {f"bits.{layer}": dist for layer in ENDS}
    return optuna.trial.create_trial(
        params={f"bits.{layer}": b for layer, b in bits.items()} | params,
        distributions=space | {k: optuna.distributions.CategoricalDistribution(["per-layer", "float"]) for k in params},
        values=[0.9, 1.0, 1.0], user_attrs={"weights": ENDS})


def test_end_trades_raise_the_first_and_last_layers_and_lower_one_between_where_the_bytes_fall() -> None:
    from squeeze.search.samplers._moves import end_trades

    parent = _ends_parent(dict.fromkeys(ENDS, 4))
    space = {name: d for name, d in parent.distributions.items()}
    moves = end_trades(space, parent)
    # The ends add 10 * 4 + 50 * 4 weight-bits; l1 a step down saves only 100, l2 and l3 save more.
    assert [m.steps for m in moves] == [
        (("bits.l0", 4, 8), ("bits.l4", 4, 8), ("bits.l2", 4, 3)),
        (("bits.l0", 4, 8), ("bits.l4", 4, 8), ("bits.l3", 4, 3)),
    ]
    assert all(m.same_network for m in moves)
    # An end already at 8 bits cannot go up within int8 (a single trade covers the other end), and
    # a plan in float has no bit-widths to trade.
    assert end_trades(space, _ends_parent(dict.fromkeys(ENDS, 4) | {"l4": 8})) == []
    floated = _ends_parent(dict.fromkeys(ENDS, 4), precision="float")
    assert end_trades({**space, "precision": floated.distributions["precision"]}, floated) == []


def test_auto_tries_an_end_trade_of_a_reference_first_and_it_beats_the_reference() -> None:
    sampler = AutoSampler(seed=0, trials=20, local=0.0, refine_share=1.0)  # 5 start-up trials
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.enqueue_trial({f"bits.{layer}": 4 for layer in ENDS}, user_attrs={"reference": "uniform 4-bit"})
    study.optimize(_ends_objective, n_trials=8)
    trials = study.get_trials()
    moves = [t for t in trials if t.user_attrs.get("local_from") == 0]
    assert moves
    first = moves[0]
    # The ends up, and of the layers between, the largest down: it saves the most bytes.
    assert [name for name, _, _ in first.user_attrs["local_steps"]] == ["bits.l0", "bits.l4", "bits.l3"]
    assert first.values[0] > trials[0].values[0] and first.values[1] < trials[0].values[1]


def test_bits_saved_counts_weight_bits_of_the_bit_steps_only() -> None:
    from squeeze.search.samplers._moves import Move, bits_saved

    move = Move(parent=0, steps=(("bits.l0", 4, 8), ("bits.l3", 4, 3), ("sparsity.l1", 0.0, 0.25)), params={})
    assert bits_saved(move, ENDS) == 10 * -4 + 1000 * 1
    # Float counts as 32 bits; a layer without a weight count saves nothing that can be told.
    assert bits_saved(Move(parent=0, steps=(("bits.l2", 32, 8), ("bits.l9", 4, 2)), params={}), ENDS) == 400 * 24


def test_step_effects_learn_from_the_moves_so_far() -> None:
    from squeeze.search.samplers._effects import step_effects

    study = optuna.create_study(directions=["maximize", "minimize"])
    make = optuna.trial.create_trial
    study.add_trial(make(params={}, distributions={}, values=[0.9, 10.0]))
    study.add_trial(make(params={}, distributions={}, values=[0.8, 9.0],
                         user_attrs={"local_from": 0, "local_steps": [["bits.a", 4, 2]]}))
    # A trade that gained: the layer that went up gets the gain.
    study.add_trial(make(params={}, distributions={}, values=[0.95, 9.0],
                         user_attrs={"local_from": 0, "local_steps": [["bits.a", 4, 8], ["bits.b", 4, 2]]}))
    # A trade that lost: the layer that went down gets the loss.
    study.add_trial(make(params={}, distributions={}, values=[0.6, 9.0],
                         user_attrs={"local_from": 0, "local_steps": [["bits.c", 4, 8], ["bits.d", 4, 2]]}))
    study.add_trial(make(params={}, distributions={}, values=[0.6, 9.0],
                         user_attrs={"local_from": 1, "local_steps": [["bits.c", 4, 8], ["bits.d", 4, 2]]}))
    study.add_trial(make(params={}, distributions={}, state=optuna.trial.TrialState.PRUNED,
                         user_attrs={"local_from": 0, "local_steps": [["sparsity.a", 0.0, 0.5]]}))
    effects = step_effects(study.get_trials(), objective=0)
    assert effects == pytest.approx({("bits.a", 4, 2): -0.1, ("bits.a", 4, 8): 0.05, ("bits.d", 4, 2): -0.25,
                                     ("sparsity.a", 0.0, 0.5): -0.9})


def test_a_step_not_taken_yet_is_expected_to_do_what_its_kind_did() -> None:
    from squeeze.search.samplers._effects import predicted
    from squeeze.search.samplers._moves import Move

    effects = {("bits.a", 4, 2): -0.1, ("bits.d", 4, 2): -0.3, ("bits.a", 4, 8): 0.05}

    def move(*steps):
        return Move(parent=0, steps=steps, params={})

    assert predicted(move(("bits.a", 4, 2)), effects) == pytest.approx(-0.1)
    # bits.e has not gone 4 -> 2; bits.a and bits.d did, and lost 0.2 on average: shrunk as if a
    # third layer had taken the step and lost nothing.
    assert predicted(move(("bits.e", 4, 2)), effects) == pytest.approx(-0.4 / 3)
    assert predicted(move(("bits.e", 4, 8), ("bits.f", 4, 2)), effects) == pytest.approx(0.05 / 2 - 0.4 / 3)
    # One layer's loss speaks for the others by half: a tie lost on one draw does not stop a kind,
    # a layer broken at 2 bits still does.
    assert predicted(move(("bits.c", 4, 3)), {("bits.a", 4, 3): -0.014}) == pytest.approx(-0.007)
    assert predicted(move(("bits.c", 4, 2)), {("bits.a", 4, 2): -0.5}) == pytest.approx(-0.25)
    # No layer has gone 8 -> 4, and sparsity is another kind: nothing is known.
    assert predicted(move(("bits.e", 8, 4)), effects) == 0.0
    assert predicted(move(("sparsity.e", 0.0, 0.25)), effects) == 0.0


# A study of squeeze's objectives: A holds most of the front's hypervolume, B and C a sliver each.
_HELD = {
    (1, 1, 1, 1, 1, 1): (0.90, 100.0, 0.3),  # A
    (2, 2, 2, 2, 2, 2): (0.95, 900.0, 1.8),  # B: a little more accurate, far larger and slower
    (3, 3, 3, 3, 3, 3): (0.50, 50.0, 1.9),  # C: a little smaller, far less accurate and slower
}
_OTHERS = [(0, 0, 0, 0, 0, 0), (0, 1, 2, 3, 2, 1)]


def _held_objective(trial: optuna.Trial) -> tuple[float, float, float]:
    plan = tuple(trial.suggest_categorical(f"p{i}", [0, 1, 2, 3]) for i in range(6))
    # Every other plan is dominated by A, so the front stays A, B and C.
    return _HELD.get(plan, (0.1, 1400.0, 1.99))


def test_auto_moves_the_front_point_that_holds_most_of_the_hypervolume_most_often() -> None:
    sampler = AutoSampler(seed=0, trials=20, local=1.0)  # 5 start-up trials
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    study.set_user_attr("objectives", ["accuracy", "size_bytes", "latency_ratio"])
    study.set_user_attr("teacher_bytes", 1000)
    for plan in [*_HELD, *_OTHERS]:
        study.enqueue_trial({f"p{i}": v for i, v in enumerate(plan)})
    study.optimize(_held_objective, n_trials=17)
    trials = study.get_trials()
    parents = [t.user_attrs["local_from"] for t in trials if "local_from" in t.user_attrs]
    assert len(parents) == 12
    # A's share shrinks with the moves it has had (a twelfth after eleven), so B and C get some;
    # drawn alike, A would parent about a third.
    assert parents.count(0) >= 9 and set(parents) - {0} <= {1, 2}


def test_auto_draws_front_points_alike_where_the_study_has_no_teacher() -> None:
    sampler = AutoSampler(seed=0, trials=20, local=1.0)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    for plan in [*_HELD, *_OTHERS]:
        study.enqueue_trial({f"p{i}": v for i, v in enumerate(plan)})
    study.optimize(_held_objective, n_trials=17)
    parents = [t.user_attrs["local_from"] for t in study.get_trials() if "local_from" in t.user_attrs]
    assert len(parents) == 12 and parents.count(0) <= 8 and {1, 2} <= set(parents)


def test_one_step_moves_leave_bit_widths_alone_in_a_float_plan() -> None:
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from squeeze.search.samplers._moves import one_steps

    space = {"precision": CategoricalDistribution(["per-layer", "float"]),
             "bits.l0": CategoricalDistribution([2, 4, 8]), "sparsity.l0": CategoricalDistribution([0.0, 0.25, 0.5])}
    def moved(precision: str) -> list[tuple]:
        parent = create_trial(params={"precision": precision, "bits.l0": 4, "sparsity.l0": 0.25},
                              distributions=space, values=[0.9, 1.0, 1.0])
        return sorted(step for move in one_steps(space, parent) for step in move.steps)

    assert moved("per-layer") == [("bits.l0", 4, 2), ("bits.l0", 4, 8), ("sparsity.l0", 0.25, 0.0), ("sparsity.l0", 0.25, 0.5)]
    assert moved("float") == [("sparsity.l0", 0.25, 0.0), ("sparsity.l0", 0.25, 0.5)]
