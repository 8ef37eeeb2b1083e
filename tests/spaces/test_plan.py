from __future__ import annotations

import json

import pytest

from squeeze.spaces import CompressionPlan, SqueezeError


def test_plan_round_trips_through_json() -> None:
    plan = CompressionPlan(
        student={"width": {"stage0": 0.5, "stage1": 1.0}, "depth": {"stage1": 1}},
        sparsity={"stages.0.0.conv": 0.25, "stages.1.0.conv": 0.5},
        bits={"stages.0.0.conv": 4, "classifier": 8, "stages.1.0.conv": 32},
    )
    text = plan.to_json()
    again = CompressionPlan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert json.loads(text)["bits"]["classifier"] == 8


def test_plan_is_frozen() -> None:
    plan = CompressionPlan(bits={"a": 8})
    with pytest.raises(Exception):
        plan.bits = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.bits["a"] = 4  # type: ignore[index]


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(SqueezeError, match=r"sparsity of layer `conv` must be in \[0, 1\)"):
        CompressionPlan(sparsity={"conv": ratio})


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 64])
def test_bits_outside_allowed_set_are_refused(bits: int) -> None:
    with pytest.raises(SqueezeError, match="bits of layer `conv` must be one of"):
        CompressionPlan(bits={"conv": bits})


def test_unknown_plan_keys_are_refused() -> None:
    with pytest.raises(SqueezeError, match="student, sparsity and bits"):
        CompressionPlan.from_dict({"bits": {}, "prune": {}})


def test_means() -> None:
    plan = CompressionPlan(sparsity={"a": 0.5, "b": 0.0}, bits={"a": 4, "b": 8})
    assert plan.mean_bits() == 6
    assert plan.mean_sparsity() == 0.25
    assert CompressionPlan().mean_bits() == 32
