"""Which study a verb means: a study file, a StudySpec, or a study name at a storage URL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import optuna

from squeeze.spaces import SqueezeError

from . import _storage as st
from ._context import study_exists
from ._spec import DEFAULT_STORAGE, StudySpec, load_spec

StudyRef = Union[str, "os.PathLike[str]", StudySpec, "Target"]
"""What a public verb accepts as its study: a study file (``*.toml``), a StudySpec, or a study name."""


@dataclass(frozen=True)
class Target:
    """A study resolved: its name at a storage URL, and its spec when a file or spec was given."""

    name: str
    url: str
    spec: StudySpec | None = None


def resolve(study: StudyRef, *, storage: str | None = None, overrides: Sequence[str] = (), trials: int | None = None,
            data: str | None = None) -> Target:
    """Resolve ``study``; ``storage`` (else ``$SQUEEZE_STORAGE``) overrides the URL of a file or spec."""
    if isinstance(study, Target):
        return study
    storage = st.resolve_url(storage) or None
    if isinstance(study, StudySpec):
        if overrides or trials is not None or data is not None:
            raise SqueezeError("overrides, trials and data apply to a study file; set them on the StudySpec instead.")
        spec = study if storage is None else replace(study, study=replace(study.study, storage=storage))
        return Target(spec.study.name, spec.study.storage, spec)
    text = os.fspath(study)
    if text.endswith(".toml") or Path(text).is_file():
        spec = load_spec(text, overrides=overrides, storage=storage, trials=trials, data=data)
        return Target(spec.study.name, spec.study.storage, spec)
    return Target(text, storage or DEFAULT_STORAGE)


def open_study(target: Target) -> tuple[optuna.Study, Any]:
    """The Optuna study and the storage engine of an existing study; a SqueezeError when there is none."""
    parsed = st.parse_url(target.url)
    missing = SqueezeError(f"study {target.name!r} does not exist in {st.safe_url(target.url)!r}.")
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise missing
    engine = st.engine_for(target.url)
    if not study_exists(target.url, target.name):
        raise missing
    return optuna.load_study(study_name=target.name, storage=target.url), engine
