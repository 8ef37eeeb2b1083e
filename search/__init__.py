"""The study's life: config, storage, workers, Pareto front, plots, export and the CLI.

The verbs (``run``, ``work``, ``run_workers``, ``check``, ``status``, ``front``, ``plot``, ``export``, ``export_front``,
``finalize``, ``finished``, ``list_studies``) take a study file, a :class:`StudySpec`, or (for the verbs that only read) a study
name, and are what the ``squeeze`` command calls. :func:`open_session` opens a study for work with
parts of your own (a sampler, an objective wrapper), as the benchmarks do.
"""

from ._attrs import StudyAttr, TrialAttr
from ._check import SpaceCheck
from ._dashboard import dashboard
from ._finalize import Finished, finalize, finished
from ._pareto import (
    FrontData,
    HypervolumeSample,
    Point,
    Teacher,
    dominates,
    front_data,
    hypervolume,
    hypervolume_history,
    pareto_front,
    reference_point,
    references_beaten,
)
from ._plots import draw
from ._readers import points
from ._session import Session, open_session, prepare, work_on
from ._spec import DEFAULT_STORAGE, StudySpec, load_spec, parse_override, spec_from_dict
from ._status import Status
from ._verbs import check, create, export, export_front, front, list_studies, plot, run, run_workers, status, work
from ._workers import WorkerReport, worker_seed
from .samplers import SAMPLERS

__all__ = [
    "DEFAULT_STORAGE",
    "SAMPLERS",
    "Finished",
    "FrontData",
    "HypervolumeSample",
    "Point",
    "Session",
    "SpaceCheck",
    "Status",
    "StudyAttr",
    "StudySpec",
    "Teacher",
    "TrialAttr",
    "WorkerReport",
    "check",
    "create",
    "dashboard",
    "dominates",
    "draw",
    "export",
    "export_front",
    "finalize",
    "finished",
    "front",
    "front_data",
    "hypervolume",
    "hypervolume_history",
    "list_studies",
    "load_spec",
    "open_session",
    "pareto_front",
    "parse_override",
    "plot",
    "points",
    "prepare",
    "reference_point",
    "references_beaten",
    "run",
    "run_workers",
    "spec_from_dict",
    "status",
    "work",
    "work_on",
    "worker_seed",
]
