from __future__ import annotations

import optuna
import pytest
import torch

from squeeze.spaces import CompressionPlan, JointSpace, SpaceSpec, SparsityRange, SqueezeError, get_family, list_families


@pytest.mark.parametrize("name", list_families())
def test_space_of_every_family(name: str) -> None:
    family = get_family(name)
    options = family.check_options({})
    teacher = family.build(options, in_channels=1, num_classes=10)
    space = JointSpace(family, options, SpaceSpec(), teacher=teacher)
    names = space.parameter_names()
    assert len(names) == len(set(names))
    assert all(n.split(".")[0] in {"student", "sparsity", "bits", "precision"} for n in names)
    assert {f"bits.{layer}" for layer in family.quantizable(teacher)} <= set(names)
    assert {f"sparsity.{layer}" for layer in family.prunable(teacher)} <= set(names)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        params = space.suggest(trial)
        plan = space.plan_for(params, in_channels=1, num_classes=10)
        assert CompressionPlan.from_json(plan.to_json()) == plan
        student = family.build(options, in_channels=1, num_classes=10, student=plan.student)
        layers = set(family.quantizable(student)) | set(family.prunable(student))
        assert set(plan.bits) <= layers and set(plan.sparsity) <= layers
        size = 8 if name == "cnn" else 32
        assert student(torch.zeros(2, 1, size, size)).shape == (2, 10)
        study.tell(trial, [0.5, 1.0, 1.0])


def test_layer_names_are_stable_across_students() -> None:
    family = get_family("cnn")
    options = family.check_options({"widths": [8, 16], "depths": [2, 2]})
    teacher = family.build(options, in_channels=1, num_classes=10)
    slim = family.build(options, in_channels=1, num_classes=10,
                        student={"width": {"stage0": 0.5, "stage1": 0.5}, "depth": {"stage1": 1}})
    assert set(family.quantizable(slim)) < set(family.quantizable(teacher))
    assert dict(slim.named_modules())["stages.0.0.conv"].out_channels == 4


def test_uniform_params_build_a_uniform_plan() -> None:
    family = get_family("cnn")
    options = family.check_options({})
    teacher = family.build(options, in_channels=1, num_classes=10)
    space = JointSpace(family, options, SpaceSpec(), teacher=teacher)
    plan = space.plan(space.uniform_params(sparsity=0.5, bits=4))
    assert set(plan.bits.values()) == {4}
    assert set(plan.sparsity.values()) == {0.5}


def test_float_precision_leaves_every_layer_in_float() -> None:
    family = get_family("cnn")
    options = family.check_options({})
    teacher = family.build(options, in_channels=1, num_classes=10)
    space = JointSpace(family, options, SpaceSpec(bits=(4, 8, 32)), teacher=teacher)
    assert "precision" in space.parameter_names()
    params = space.uniform_params(sparsity=0.0, bits=4)
    assert set(space.plan(params).bits.values()) == {4}
    assert set(space.plan({**params, "precision": "float"}).bits.values()) == {32}
    with pytest.raises(SqueezeError, match="precision"):
        space.plan({**params, "precision": "half"})
    # A random sampler reaches the all-float region about half the time, not (1/3)**layers of it.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    floats = 0
    for _ in range(40):
        trial = study.ask()
        floats += set(space.plan(space.suggest(trial)).bits.values()) == {32}
        study.tell(trial, [0.5, 1.0, 1.0])
    assert 10 <= floats <= 30


@pytest.mark.parametrize(
    ("bits", "float_choice", "expected"),
    [((4, 8, 32), True, True), ((4, 8), True, False), ((32,), True, False), ((4, 8, 32), False, False)],
)
def test_precision_is_offered_only_when_both_kinds_are(bits, float_choice, expected) -> None:
    family = get_family("cnn")
    options = family.check_options({})
    teacher = family.build(options, in_channels=1, num_classes=10)
    space = JointSpace(family, options, SpaceSpec(bits=bits, float_choice=float_choice), teacher=teacher)
    assert ("precision" in space.parameter_names()) is expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": ()}, "space.sparsity` must list at least one"),
        ({"sparsity": (0.5, 1.0)}, r"numbers in \[0, 1\)"),
        ({"bits": (3, 12)}, r"\{2..8, 16, 32\}"),
        ({"bits": ()}, "at least one bit-width"),
        ({"width": (0.0,)}, r"in \(0, 1\]"),
    ],
)
def test_space_spec_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        SpaceSpec(**kwargs)


def test_sparsity_range() -> None:
    with pytest.raises(SqueezeError, match="low <= high"):
        SparsityRange(0.6, 0.2)
    family = get_family("cnn")
    options = family.check_options({})
    teacher = family.build(options, in_channels=1, num_classes=10)
    space = JointSpace(family, options, SpaceSpec(sparsity=SparsityRange(0.0, 0.8, 0.1)), teacher=teacher)
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert all(0.0 <= v <= 0.8 for k, v in params.items() if k.startswith("sparsity."))
