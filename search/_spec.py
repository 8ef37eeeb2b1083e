"""Study files: TOML in, a validated frozen :class:`StudySpec` out.

Validation happens once, here, at the edge: every later part may trust the spec. Every error is
one sentence that names the key (dotted as in the file) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeeze.objectives import CompressSpec, FinalizeSpec, LatencySpec, TrainingBudget, list_tasks, task_loader
from squeeze.spaces import SpaceSpec, SparsityRange, SqueezeError, get_family

from .samplers import SAMPLERS

DEFAULT_STORAGE = "sqlite:///studies/squeeze.db"
DEFAULT_RUNTIME = "onnxruntime"
"""``latency.runtime`` of a new study whose file does not name one (README, "Runtimes": why). A study stored
before runtimes existed ran in ``torch``, and is read so (``LatencySpec``'s own default)."""
OBJECTIVES = ("accuracy", "size", "latency")


@dataclass(frozen=True)
class StudyOptions:
    """``[study]``: identity, storage, budget and sampling.

    ``heartbeat_s`` is how often a worker proves it is alive; a running trial whose worker has been
    silent for ``grace_s`` seconds is failed and retried once. Every worker of a study should use
    the same values (they may change between runs: they are not part of the stored config check).

    ``early_stop``: a trial that cannot meet the study's budgets stops as soon as that is known
    (recorded PRUNED, with the reason and the time it saved): before training when the smallest
    artifact its plan allows is already over ``objectives.max_size_kb``; after distillation when
    its accuracy on a sample of the training data is more than ``early_stop_margin`` below
    ``objectives.min_accuracy``. Held-out data is never used for this. A trial whose plan a completed
    trial already judged, or another worker's earlier trial is judging, stops before training too (same
    seed, same artifact).
    """

    name: str
    storage: str = DEFAULT_STORAGE
    trials: int = 40
    sampler: str = "auto"
    seed: int = 0
    snapshot_every: int = 5
    references: bool = True
    heartbeat_s: int = 5
    grace_s: int = 20
    early_stop: bool = True
    early_stop_margin: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SqueezeError(f"`study.name` must be a non-empty string, but got {self.name!r}.")
        if not isinstance(self.storage, str) or not self.storage:
            raise SqueezeError(f"`study.storage` must be a database URL string, but got {self.storage!r}.")
        _positive_int("study.trials", self.trials)
        _positive_int("study.snapshot_every", self.snapshot_every)
        # numpy and scikit-learn take seeds below 2**32; checked here so the error names the key.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise SqueezeError(f"`study.seed` must be an integer in [0, 2**32), but got {self.seed!r}.")
        if self.sampler not in SAMPLERS:
            raise SqueezeError(f"`study.sampler` must be one of {list(SAMPLERS)}, but got {self.sampler!r}.")
        if not isinstance(self.references, bool):
            raise SqueezeError(f"`study.references` must be true or false, but got {self.references!r}.")
        if not isinstance(self.early_stop, bool):
            raise SqueezeError(f"`study.early_stop` must be true or false, but got {self.early_stop!r}.")
        margin = self.early_stop_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
            raise SqueezeError(f"`study.early_stop_margin` must be a number in [0, 1], but got {margin!r}.")
        _positive_int("study.heartbeat_s", self.heartbeat_s)
        _positive_int("study.grace_s", self.grace_s)
        if self.grace_s < 2 * self.heartbeat_s:
            # One late beat (a busy machine, a slow database) must not fail a live trial.
            raise SqueezeError(
                f"`study.grace_s` must be at least twice `study.heartbeat_s`, but got grace_s={self.grace_s} "
                f"and heartbeat_s={self.heartbeat_s}; raise grace_s to {2 * self.heartbeat_s} or more."
            )


DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TaskSpec:
    """``[task]``: the data set, where it lies, its splits, the teacher family and the device.

    ``test`` is the share of the samples carved out as the test split when the task has none of its
    own (MNIST's ``t10k``, CIFAR's test batch and an ImageFolder ``test/`` are used as they are);
    ``holdout`` is the share of the rest held out as the validation split, which scores trials.
    ``dataset`` and ``family`` are registered names or a user's ``package.module:function``.
    ``device`` is where training runs (``cuda`` falls back to the CPU where no GPU is present);
    latency is always measured on the CPU, the deployment target of the int8 artifacts.
    """

    dataset: str = "digits"
    family: str = "cnn"
    data: str | None = None
    holdout: float = 0.3
    test: float = 0.2
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.family, str):
            raise SqueezeError(f"`task.family` must be a family name string, but got {self.family!r}.")
        if not isinstance(self.dataset, str):
            raise SqueezeError(f"`task.dataset` must be one of {list_tasks()}, but got {self.dataset!r}; a user's data set is named `package.module:function`.")
        task_loader(self.dataset)
        if self.device not in DEVICES:
            raise SqueezeError(f"`task.device` must be one of {list(DEVICES)}, but got {self.device!r}.")
        if self.data is not None and not isinstance(self.data, str):
            raise SqueezeError(f"`task.data` must be a folder path string, but got {self.data!r}.")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) or not 0 < self.holdout < 1:
            raise SqueezeError(f"`task.holdout` must be a number in (0, 1), but got {self.holdout!r}.")
        if isinstance(self.test, bool) or not isinstance(self.test, (int, float)) or not 0 < self.test < 1:
            raise SqueezeError(f"`task.test` must be a number in (0, 1), but got {self.test!r}.")
        model = get_family(self.family).check_options(dict(self.model))
        object.__setattr__(self, "model", model)


@dataclass(frozen=True)
class ObjectivesSpec:
    """``[objectives]``: the three objectives, in order, and optional budgets on them."""

    names: tuple[str, ...] = OBJECTIVES
    max_size_kb: float | None = None
    max_latency_ratio: float | None = None
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        if tuple(self.names) != OBJECTIVES:
            raise SqueezeError(
                f"`objectives.names` must be {list(OBJECTIVES)} (in that order), but got {list(self.names)!r}."
            )
        for key in ("max_size_kb", "max_latency_ratio"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise SqueezeError(f"`objectives.{key}` must be a positive number, but got {value!r}.")
        if self.min_accuracy is not None and (
            isinstance(self.min_accuracy, bool) or not isinstance(self.min_accuracy, (int, float)) or not 0 <= self.min_accuracy <= 1
        ):
            raise SqueezeError(f"`objectives.min_accuracy` must be a number in [0, 1], but got {self.min_accuracy!r}.")


@dataclass(frozen=True)
class StudySpec:
    """A whole study file, validated."""

    study: StudyOptions
    task: TaskSpec
    space: SpaceSpec
    objectives: ObjectivesSpec
    training: TrainingBudget
    compress: CompressSpec
    latency: LatencySpec
    finalize: FinalizeSpec = field(default_factory=FinalizeSpec)
    source: str = "<string>"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), the form stored with the study; the storage password is masked."""
        from ._storage import safe_url

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "source":
                continue
            value = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = json.loads(json.dumps(value, default=_jsonable))
        # The config is stored in the database and may be shown; the password must never be.
        out["study"]["storage"] = safe_url(out["study"]["storage"])
        if out["task"].get("device") == "cpu":
            # The default is left out, so studies stored before `task.device` existed still resume.
            del out["task"]["device"]
        return out

    def training_seed(self) -> int:
        """The seed every trial of a study trains with.

        One seed for all trials (common random numbers): two plans are trained from the same
        initialisation on the same batches, so the difference between their scores is the difference
        between the plans, not between two draws of training noise (which, for one plan, spans more
        than a point of accuracy on MNIST); and a plan drawn again scores what it scored before.
        """
        return self.study.seed * 10_007

    def comparable(self) -> dict[str, Any]:
        """The parts a resumed study must not change: everything but ``[study]``, the data folder and ``[finalize]``
        (which changes no trial)."""
        d = self.to_dict()
        d.pop("study")
        d.pop("finalize", None)
        d["task"].pop("data", None)
        d.get("latency", {}).pop("target", None)  # checked apart, against the study's stored target
        return d


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(type(value).__name__)


def _printable(text: str) -> str:
    """A key as it can be shown in a one-line message: control characters escaped."""
    return text if text.isprintable() else json.dumps(text)[1:-1]


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SqueezeError(f"`{key}` must be a positive integer, but got {value!r}.")


_SECTIONS: dict[str, type] = {
    "study": StudyOptions,
    "task": TaskSpec,
    "space": SpaceSpec,
    "objectives": ObjectivesSpec,
    "training": TrainingBudget,
    "compress": CompressSpec,
    "latency": LatencySpec,
    "finalize": FinalizeSpec,
}
_FREE_TABLES = {("task", "options"), ("task", "model")}


def _check_values(key: str, value: Any, source: str) -> None:
    """Refuse what no key takes: NaN or infinite numbers, and TOML dates and times."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SqueezeError(f"`{_printable(key)}` in {source} must be a finite number, but got {value!r}.")
    if isinstance(value, (dt.date, dt.time)):
        raise SqueezeError(f"`{_printable(key)}` in {source} must not be a date or time, but got {value.isoformat()!r}.")
    if isinstance(value, list):
        for item in value:
            _check_values(key, item, source)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_values(f"{key}.{k}", item, source)


def _build(section: str, cls: type, table: Any, source: str) -> Any:
    if not isinstance(table, dict):
        raise SqueezeError(f"`{section}` in {source} must be a table, but got {type(table).__name__}.")
    _check_values(section, table, source)
    allowed = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in allowed:
            raise SqueezeError(
                f"unknown key `{section}.{_printable(str(key))}` in {source}; `{section}` takes {sorted(allowed)}."
            )
    kwargs = dict(table)
    for key, value in kwargs.items():
        if (section, key) in _FREE_TABLES:
            if not isinstance(value, dict):
                raise SqueezeError(f"`{section}.{key}` in {source} must be a table, but got {value!r}.")
            continue
        if isinstance(value, dict) and not (section == "space" and key == "sparsity"):
            raise SqueezeError(f"`{section}.{key}` in {source} must be a value, but got a table.")
    if section == "space":
        kwargs = _space_kwargs(kwargs)
    if section == "objectives" and "names" in kwargs:
        if not isinstance(kwargs["names"], list):
            raise SqueezeError(f"`objectives.names` must be a list, but got {kwargs['names']!r}.")
        kwargs["names"] = tuple(kwargs["names"])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SqueezeError(f"`{section}` in {source} is malformed: {exc}.") from None


def _space_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    sparsity = out.get("sparsity")
    if isinstance(sparsity, dict):
        unknown = set(sparsity) - {"low", "high", "step"}
        if unknown or not {"low", "high"} <= set(sparsity):
            raise SqueezeError(
                f"`space.sparsity` as a range takes keys low, high and optional step, but got {sorted(sparsity)}."
            )
        for k, v in sparsity.items():
            if k == "step" and v is None:  # what StudySpec.to_dict() writes for "no step"
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SqueezeError(f"`space.sparsity.{k}` must be a number, but got {v!r}.")
        out["sparsity"] = SparsityRange(float(sparsity["low"]), float(sparsity["high"]), sparsity.get("step"))
    elif sparsity is not None:
        out["sparsity"] = _as_tuple("space.sparsity", sparsity)
    for key in ("bits", "width"):
        if key in out:
            out[key] = _as_tuple(f"space.{key}", out[key])
    for key in ("depth", "prune", "quantize", "float_choice"):
        if key in out and not isinstance(out[key], bool):
            raise SqueezeError(f"`space.{key}` must be true or false, but got {out[key]!r}.")
    return out


def _as_tuple(key: str, value: Any) -> tuple:
    if not isinstance(value, list):
        raise SqueezeError(f"`{key}` must be a list of choices, but got {value!r}.")
    return tuple(value)


def _set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise SqueezeError(f"`--set {dotted}=...` needs a dotted key such as `study.trials`, but got `{dotted}`.")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SqueezeError(f"`--set {dotted}`: `{part}` is a value, not a table.")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is read as TOML, else taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SqueezeError(f"`--set` takes KEY=VALUE (for example study.trials=20), but got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def spec_from_dict(doc: Mapping[str, Any], *, source: str = "<string>") -> StudySpec:
    """Validate a parsed study document."""
    if not isinstance(doc, Mapping):
        raise SqueezeError(f"a study document ({source}) must be a table of tables, but got {type(doc).__name__}.")
    unknown = set(doc) - set(_SECTIONS)
    if unknown:
        raise SqueezeError(
            f"unknown table `{_printable(sorted(map(str, unknown))[0])}` in {source}; a study file has {sorted(_SECTIONS)}."
        )
    study = doc.get("study", {})
    if isinstance(study, Mapping) and "name" not in study:
        raise SqueezeError(f"`study.name` is missing in {source}; every study needs a name.")
    latency = doc.get("latency", {})
    if isinstance(latency, Mapping) and "runtime" not in latency:
        doc = {**doc, "latency": {**latency, "runtime": DEFAULT_RUNTIME}}
    built = {section: _build(section, cls, doc.get(section, {}), source) for section, cls in _SECTIONS.items()}
    return StudySpec(**built, source=source)


def load_spec(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    trials: int | None = None,
    storage: str | None = None,
    data: str | None = None,
) -> StudySpec:
    """Read, override and validate a study file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SqueezeError(f"study file `{p}` does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SqueezeError(f"study file `{p}` cannot be read: {exc}.") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SqueezeError(f"study file `{p}` is not valid TOML: {exc}.") from None
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(doc, key, value)
    if trials is not None:
        _set_dotted(doc, "study.trials", trials)
    if storage:
        _set_dotted(doc, "study.storage", storage)
    if data:
        _set_dotted(doc, "task.data", data)
    return spec_from_dict(doc, source=str(p))
