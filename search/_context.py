"""The study context: connect to a storage, create or resume a study, and refuse a changed config.

Nothing is written when the storage is unreachable, when a study to join is missing, or when a
stored study's config differs from the file's.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage

from squeeze.spaces import SqueezeError

from . import _storage as st
from ._attrs import StudyAttr
from ._spec import StudyOptions, StudySpec
from ._timing import LatencyTarget, ensure_target
from ._workers import retry_callback

OBJECTIVE_NAMES = ("accuracy", "size_bytes", "latency_ratio")
"""The three objectives, in the order of a trial's values."""


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence the Optuna warnings that our own design triggers, for the duration of a call.

    Workers drive heartbeats themselves around ask-and-tell (Optuna warns that heartbeats are meant
    for ``Study.optimize``), and the retry callback is marked experimental. Scoped, not set at import,
    so importing squeeze changes nothing in the caller's warning filters.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


DIRECTIONS = ["maximize", "minimize", "minimize"]
"""Optuna's direction of each objective."""
HEARTBEAT_S = StudyOptions.heartbeat_s
GRACE_S = StudyOptions.grace_s
"""Defaults; a study's own are ``spec.study.heartbeat_s`` and ``spec.study.grace_s``."""


def _optuna_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> RDBStorage:
    st.ensure_sqlite_folder(url)
    with quiet_optuna():
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True} | ({"connect_args": {"timeout": 60}} if st.is_sqlite(url) else {}),
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=retry_callback(),
        )


@dataclass
class Context:
    """Everything a worker holds for one study."""

    spec: StudySpec
    url: str
    engine: sa.Engine
    storage: RDBStorage
    study: optuna.Study
    target: LatencyTarget | None = None
    """Where the study's candidates are timed (set by :func:`connect`)."""


def _diff(stored: Any, current: Any, prefix: str = "") -> str | None:
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            found = _diff(stored.get(key), current.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if stored == current else f"`{prefix}` is {stored!r} in the stored study but {current!r} in the file"


def connect(spec: StudySpec, *, create: bool) -> Context:
    """Open (and, if ``create``, create) the study named in ``spec`` at its storage.

    Nothing is written when the storage is unreachable, when the study is missing and
    ``create`` is false, or when a stored study's config differs from ``spec``.
    """
    url = spec.study.storage
    st.parse_url(url)
    st.ensure_sqlite_folder(url)
    engine = st.engine_for(url)
    name = spec.study.name
    existing = study_exists(url, name)
    if not existing and not create:
        raise SqueezeError(
            f"study {name!r} does not exist in {st.safe_url(url)!r}; start it with `squeeze run` first."
        )
    if existing:
        stored = st.load_config(engine, name) if _has_tables(engine) else None
        if stored is not None:
            _refuse_two_splits(name, stored)
            difference = _diff(_comparable(stored), spec.comparable())
            if difference:
                raise SqueezeError(f"cannot resume study {name!r}: {difference}; use a new study name.")
    with st.schema_lock(engine):
        # Several workers starting a new database at once would race on CREATE TABLE.
        st.create_tables(engine)
        storage = _optuna_storage(url, heartbeat_s=spec.study.heartbeat_s, grace_s=spec.study.grace_s)
        study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS, load_if_exists=True)
    with st.study_lock(engine, name):
        stored = st.save_config(engine, name, spec.to_dict())
        difference = _diff(_comparable(stored), spec.comparable())
        if difference:
            raise SqueezeError(f"cannot resume study {name!r}: {difference}; use a new study name.")
        if not study.user_attrs.get(StudyAttr.CREATED):
            study.set_user_attr(StudyAttr.CREATED, True)
            study.set_user_attr(StudyAttr.OBJECTIVES, list(OBJECTIVE_NAMES))
        if study.metric_names is None:
            # Optuna's own objective names, which every Optuna tool (optuna-dashboard's axes) shows;
            # a study created before squeeze set them gets them when it is next opened for work.
            with quiet_optuna():
                study.set_metric_names(list(OBJECTIVE_NAMES))
    ctx = Context(spec=spec, url=url, engine=engine, storage=storage, study=study)
    ctx.target = ensure_target(ctx)
    return ctx


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    d = {k: v for k, v in config.items() if k not in ("study", "finalize")}
    d.get("task", {}).pop("data", None)
    if isinstance(d.get("latency"), dict):
        # A study stored before `latency.runtime` existed ran in torch. Its target is checked apart
        # (``ensure_target``): a file that leaves it out resumes a study that has one.
        d["latency"] = {"runtime": "torch", **{k: v for k, v in d["latency"].items() if k != "target"}}
    return d


def _refuse_two_splits(name: str, stored: dict[str, Any]) -> None:
    """A study stored before the test split existed: its validation split was carved without one, so
    resuming or finalizing it would mix samples between validation and test. It stays readable."""
    if "test" not in stored.get("task", {}):
        raise SqueezeError(
            f"study {name!r} was created before studies had a test split (its stored config has no `task.test`), so "
            f"its validation data may hold what is now test data; it opens read-only (status, pareto, plot, export), "
            f"and searching or finalizing needs a new study name."
        )


def _has_tables(engine: sa.Engine) -> bool:
    return "squeeze_studies" in sa.inspect(engine).get_table_names()


def study_exists(url: str, name: str) -> bool:
    engine = st.engine_for(url)
    if "studies" not in sa.inspect(engine).get_table_names():
        return False
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM studies WHERE study_name = :n"), {"n": name}).scalar_one() > 0
