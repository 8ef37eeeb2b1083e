"""A narrowed joint space: what a study's check or a failed trial took out is never suggested again."""

from __future__ import annotations

import json

import optuna
import pytest

from squeeze.spaces import ALL_PRUNING, JointSpace, Narrowing, Removal, SpaceSpec, get_family


def _space(narrowing: Narrowing | None = None, *, family=None) -> JointSpace:
    family = family or get_family("cnn")
    options = family.check_options({"widths": [8, 16], "depths": [2, 2]})
    teacher = family.build(options, in_channels=1, num_classes=10)
    return JointSpace(family, options, SpaceSpec(width=(0.5, 0.75, 1.0)), teacher=teacher, narrowing=narrowing)


def test_a_removed_group_layer_or_knob_choice_is_never_suggested() -> None:
    whole = _space()
    assert {"sparsity.stages.0.0.conv", "bits.classifier", "student.width.stage1"} <= set(whole.parameter_names())
    narrowed = _space(Narrowing((
        Removal("sparsity.stages.0.0.conv", "prune", "IndexError: no"),
        Removal("bits.classifier", "load", "at 4 bits: ValueError: no"),
        Removal("student.width.stage1", "build", "ValueError: no", choice=0.5),
        Removal("student.depth.stage0", "build", "ValueError: no", choice=1),
        Removal("student.depth.stage0", "build", "ValueError: no", choice=2),
    )))
    names = set(narrowed.parameter_names())
    assert names == set(whole.parameter_names()) - {"sparsity.stages.0.0.conv", "bits.classifier", "student.depth.stage0"}
    assert {k.key: k.choices for k in narrowed.knobs if k.kind == "width"}["stage1"] == (0.75, 1.0)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        params = narrowed.suggest(study.ask())
        plan = narrowed.plan_for(params, in_channels=1, num_classes=10)
        assert "stages.0.0.conv" not in plan.sparsity and "classifier" not in plan.bits
        assert plan.student["width"]["stage1"] != 0.5


class _NoGraph:
    """The cnn family, but its graph cannot be traced: asking for its groups fails the test."""

    def __init__(self) -> None:
        self._cnn = get_family("cnn")
        self.name = "cnn"

    def __getattr__(self, name: str):
        return getattr(self._cnn, name)

    def prunable(self, model):
        raise AssertionError("a space with pruning off must not trace the graph")


def test_pruning_off_takes_out_every_group_without_tracing_the_graph() -> None:
    space = _space(Narrowing((Removal(ALL_PRUNING, "graph", "ZeroDivisionError: integer division or modulo by zero"),)),
                   family=_NoGraph())
    names = space.parameter_names()
    assert not any(n.startswith("sparsity.") for n in names) and any(n.startswith("bits.") for n in names)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert not space.plan_for(space.suggest(study.ask()), in_channels=1, num_classes=10).sparsity


def test_a_narrowing_round_trips_through_json_and_keeps_a_part_s_first_reason() -> None:
    first = Removal("bits.fc", "load", "at 4 bits: ValueError: circular", trial=None)
    later = Removal("bits.fc", "quantize", "RuntimeError: other", trial=3)
    narrowing = Narrowing((first,)).with_removals([later, Removal("student.kwarg.width", "build", "x", choice=4, trial=5)])
    assert narrowing.removals[0] == first and len(narrowing.removals) == 2
    assert Narrowing.from_list(json.loads(json.dumps(narrowing.to_list()))) == narrowing
    assert first.describe() == "bits.fc: load failed (check): at 4 bits: ValueError: circular"
    assert narrowing.removals[1].describe() == "student.kwarg.width = 4: build failed (trial 5): x"
    assert Removal(ALL_PRUNING, "graph", "why").describe() == "pruning (every group): graph failed (check): why"


@pytest.mark.parametrize("parameter", ["sparsity.a", "bits.a", "student.width.stage0"])
def test_keeps_and_choices(parameter: str) -> None:
    narrowing = Narrowing((Removal(parameter, "run", "why"),))
    assert not narrowing.keeps(parameter) and narrowing.keeps(parameter + "x")
    assert narrowing.choices(parameter, (1, 2)) == ()
