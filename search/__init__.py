"""The study's life: config, storage, workers, Pareto front, plots, export and the CLI."""

from ._pareto import (
    FrontData,
    HypervolumeSample,
    Point,
    Teacher,
    front_data,
    hypervolume,
    pareto_front,
    reference_point,
    references_beaten,
)
from ._plots import draw
from ._spec import DEFAULT_STORAGE, SAMPLERS, StudySpec, load_spec, parse_override, spec_from_dict

__all__ = [
    "DEFAULT_STORAGE",
    "SAMPLERS",
    "FrontData",
    "HypervolumeSample",
    "Point",
    "StudySpec",
    "Teacher",
    "draw",
    "front_data",
    "hypervolume",
    "load_spec",
    "pareto_front",
    "parse_override",
    "reference_point",
    "references_beaten",
    "spec_from_dict",
]
