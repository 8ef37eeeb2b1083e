"""Hypothesis: any study document, valid or broken, gives a StudySpec or a SqueezeError, never another exception."""

from __future__ import annotations

import copy
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squeeze.objectives import PRUNERS, QUANTIZERS, list_tasks
from squeeze.search import SAMPLERS, StudySpec, load_spec, spec_from_dict
from squeeze.spaces import ALLOWED_BITS, SqueezeError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Everything a TOML file can hold: numbers (NaN and infinities included), strings, booleans,
# dates and times, arrays (mixed ones too) and tables.
scalars = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**70),
    st.sampled_from([-1, 0, 1, 2, 3, 4, 8, 16, 32, 64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 0.99, 1.0, -0.1]),
    st.text(max_size=8),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
keys = st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["name", "trials", "bits", "low", "high", "step",
                                                                  "widths", "depths", "sparsity", "options"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=8)

SECTION_KEYS = {
    "study": ["name", "storage", "trials", "sampler", "seed", "snapshot_every", "references"],
    "task": ["dataset", "family", "data", "holdout", "options", "model"],
    "space": ["sparsity", "bits", "width", "depth", "prune", "quantize"],
    "objectives": ["names", "max_size_kb", "max_latency_ratio", "min_accuracy"],
    "training": ["teacher_epochs", "distill_steps", "finetune_steps", "qat_steps", "batch_size", "lr", "temperature", "alpha"],
    "compress": ["pruner", "quantizer", "round_channels"],
    "latency": ["batch", "threads", "warmup", "repeats", "min_round_ms"],
}

fractions = st.floats(min_value=0.0, max_value=0.999)


@st.composite
def valid_docs(draw) -> dict[str, Any]:
    """A study document that breaks no rule."""
    depths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    sparsity = draw(st.one_of(
        st.lists(fractions, min_size=1, max_size=4),
        st.tuples(fractions, fractions).map(sorted).map(lambda lh: {"low": lh[0], "high": lh[1]}),
    ))
    return {
        "study": {
            "name": draw(st.text(min_size=1, max_size=12).filter(str.strip)),
            "storage": "sqlite:///studies/squeeze.db",
            "trials": draw(st.integers(1, 10_000)),
            "sampler": draw(st.sampled_from(SAMPLERS)),
            "seed": draw(st.integers(0, 2**32 - 1)),
            "references": draw(st.booleans()),
        },
        "task": {
            "dataset": draw(st.sampled_from(list_tasks())),
            "family": "cnn",
            "holdout": draw(st.floats(min_value=0.01, max_value=0.99)),
            "model": {"widths": draw(st.lists(st.integers(1, 64), min_size=len(depths), max_size=len(depths))),
                      "depths": depths},
        },
        "space": {
            "sparsity": sparsity,
            "bits": draw(st.lists(st.sampled_from(ALLOWED_BITS), min_size=1, max_size=4, unique=True)),
            "width": draw(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=3)),
            "depth": draw(st.booleans()),
        },
        "objectives": {"names": ["accuracy", "size", "latency"]},
        "training": {"teacher_epochs": draw(st.integers(0, 50)), "batch_size": draw(st.integers(1, 512)),
                     "lr": draw(st.floats(min_value=1e-6, max_value=1.0))},
        "compress": {"pruner": draw(st.sampled_from(PRUNERS)), "quantizer": draw(st.sampled_from(QUANTIZERS))},
        "latency": {"repeats": draw(st.integers(1, 50))},
    }


@st.composite
def broken_docs(draw) -> dict[str, Any]:
    """A valid document with one to three things changed: a value, a missing key, an extra key, a section."""
    doc = copy.deepcopy(draw(valid_docs()))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(SECTION_KEYS) + ["bogus"]))
        action = draw(st.sampled_from(["set", "delete", "extra", "section", "nested"]))
        table = doc.setdefault(section, {}) if isinstance(doc.get(section, {}), dict) else {}
        if action == "set":
            table[draw(st.sampled_from(SECTION_KEYS.get(section, ["x"])))] = draw(values)
        elif action == "delete" and table:
            table.pop(draw(st.sampled_from(sorted(table))))
        elif action == "extra":
            table[draw(keys)] = draw(values)
        elif action == "section":
            doc[section] = draw(values)
        elif action == "nested":
            # Inside the free-form and nested tables: task.model, task.options, space.sparsity.
            where = draw(st.sampled_from([("task", "model"), ("task", "options"), ("space", "sparsity")]))
            inner = doc.setdefault(where[0], {})
            if isinstance(inner, dict):
                target = inner.get(where[1])
                if isinstance(target, dict):
                    target[draw(keys)] = draw(values)
                else:
                    inner[where[1]] = draw(st.dictionaries(keys, values, max_size=3))
    return doc


def _load(doc: Any) -> StudySpec | None:
    try:
        return spec_from_dict(doc, source="fuzz.toml")
    except SqueezeError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"the error must be one line: {message!r}"
        return None


@FUZZ
@given(valid_docs())
def test_valid_documents_load(doc: dict[str, Any]) -> None:
    spec = spec_from_dict(doc, source="fuzz.toml")
    assert spec.study.name == doc["study"]["name"]
    assert spec.study.trials == doc["study"]["trials"]
    assert tuple(spec.space.bits) == tuple(doc["space"]["bits"])
    assert spec_from_dict(spec.to_dict(), source="again") == spec_from_dict(doc, source="again")


@FUZZ
@given(broken_docs())
def test_broken_documents_give_a_spec_or_a_squeeze_error(doc: dict[str, Any]) -> None:
    spec = _load(doc)
    if spec is not None:
        # Whatever passed validation stores as JSON and loads back to the same spec.
        assert spec_from_dict(spec.to_dict(), source="fuzz.toml") == spec


@FUZZ
@given(st.dictionaries(keys, values, max_size=5) | values)
def test_arbitrary_documents_give_a_spec_or_a_squeeze_error(doc: Any) -> None:
    _load(doc)


BASE_TEXT = """
[study]
name = "fuzz"
trials = 3

[task.model]
widths = [8, 16]
depths = [1, 1]

[space]
sparsity = { low = 0.0, high = 0.5 }
bits = [4, 8, 32]
"""


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(BASE_TEXT)), st.integers(0, 3), st.text(max_size=3)), min_size=1, max_size=4))
def test_mutated_study_files_give_a_spec_or_a_squeeze_error(edits: list[tuple[int, int, str]]) -> None:
    text = BASE_TEXT
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_spec(path)
        except SqueezeError as exc:
            assert "\n" not in str(exc)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_by_name(value: float) -> None:
    doc = {"study": {"name": "x"}, "space": {"sparsity": {"low": 0.0, "high": 0.5, "step": value}}}
    with pytest.raises(SqueezeError, match=r"`space\.sparsity\.step` .*finite"):
        spec_from_dict(doc)


def test_dates_are_refused_by_name() -> None:
    with pytest.raises(SqueezeError, match=r"`training\.lr`"):
        spec_from_dict({"study": {"name": "x"}, "training": {"lr": dt.date(2024, 1, 1)}})
