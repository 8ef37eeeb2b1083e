"""Fewer round trips to Optuna's RDB storage: a running trial's writes go in one transaction.

Optuna's RDB storage commits every ``suggest_*`` and every ``set_user_attr`` on its own: with the
~30 parameters of our joint space that is ~40 transactions a trial, which measured ~100-200 ms of
pure storage time per trial on PostgreSQL (see ``benchmarks/workers.py``). :class:`BatchedStorage`
is Optuna's own cached wrapper with one change: a running trial's parameters and attributes are
held in memory and written together, in one transaction, before anything reads that trial or
changes its state, and whenever :meth:`BatchedStorage.flush` is called: the worker does at the claim,
the objective does once it has suggested its parameters (``_workers.write_params``), and the
heartbeat does, so other workers see a trial's later writes within a heartbeat.

What this keeps of Optuna's contract: every write precedes the trial's state change (so a
COMPLETE trial always has its parameters); a parameter's distribution is checked against the
study's when it is suggested (from the cache; a name this process has not seen yet is written
through at once, which checks it against the database). What it relaxes: a worker killed before
a flush loses what it held for its running trial (so the worker writes the parameters before the
trial's long part: the retry of a trial copies the parameters stored for it); and a write to a trial
another worker has already failed surfaces at the flush, not at the write (the worker loop expects that).

It relies on Optuna 5 internals (``_CachedStorage``, the RDB models); ``tests/search/test_storage.py``
checks that what it writes reads back as Optuna wrote it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState


@dataclass
class _Pending:
    params: list[tuple[str, float, distributions.BaseDistribution]] = field(default_factory=list)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)


class BatchedStorage(_CachedStorage):
    """Optuna's cached RDB storage, writing each running trial's parameters and attributes at once.

    It also answers, without a query, the reads that Optuna makes of a trial this process runs:
    ``Trial.__init__`` reads back the trial just created or claimed, and ``study.tell`` reads it
    before and after the state change. Only this worker writes a trial while it runs (another can
    only fail it as stale, which the next write or the state change then reports), so a local copy
    kept up to date with the writes is what the database holds.
    """

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._pending: dict[int, _Pending] = {}
        self._mirror: dict[int, FrozenTrial] = {}  # running trials this process owns
        self._finished: dict[int, FrozenTrial] = {}  # the one it has just finished, served once
        self._owned: set[int] = set()
        self._no_waiting = False
        # Held for a whole flush, so a state change waits for a flush that another thread started.
        self._flush_lock = threading.RLock()

    def skip_next_waiting_check(self) -> None:
        """The caller knows the study has no WAITING trial: the next ``ask`` need not look for one.

        (``ask`` reads every new and unfinished trial to find WAITING ones; the worker loop has just
        counted them, under the study lock.)
        """
        self._no_waiting = True

    # -- buffered writes

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: distributions.BaseDistribution) -> None:
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            known = self._studies[study_id].param_distribution.get(param_name)
        with self._flush_lock:
            if known is None:
                self.flush(trial_id)  # keep the order of writes
                super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            else:
                distributions.check_distribution_compatibility(known, distribution)
                self._pending.setdefault(trial_id, _Pending()).params.append(
                    (param_name, param_value_internal, distribution))
            mirror = self._mirror.get(trial_id)
            if mirror is not None:
                mirror.distributions[param_name] = distribution
                mirror.params[param_name] = distribution.to_external_repr(param_value_internal)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._flush_lock:
            self._pending.setdefault(trial_id, _Pending()).user_attrs[key] = value
            if trial_id in self._mirror:
                self._mirror[trial_id].user_attrs[key] = copy.deepcopy(value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._flush_lock:
            self._pending.setdefault(trial_id, _Pending()).system_attrs[key] = value
            if trial_id in self._mirror:
                self._mirror[trial_id].system_attrs[key] = copy.deepcopy(value)

    def flush(self, trial_id: int | None = None) -> None:
        """Write what is held for ``trial_id`` (every trial if None), one transaction per trial.

        Raises Optuna's ``UpdateFinishedTrialError`` if the trial was finished meanwhile (by another
        worker that found it stale); what was held for it is dropped either way.
        """
        with self._flush_lock:
            ids = [trial_id] if trial_id is not None else list(self._pending)
            for tid in ids:
                pending = self._pending.pop(tid, None)
                if pending is not None:
                    self._write(tid, pending)

    def _write(self, trial_id: int, pending: _Pending) -> None:
        backend = self._backend
        with _create_scoped_session(backend.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, trial.state)
            self._add_pending(session, trial_id, pending)

    def _add_pending(self, session: Any, trial_id: int, pending: _Pending) -> None:
        if pending.params:
            # One cached statement, executed for many rows (unit-of-work objects cost ~0.3 ms apiece).
            session.execute(sa.insert(models.TrialParamModel), [
                {"trial_id": trial_id, "param_name": name, "param_value": value,
                 "distribution_json": distributions.distribution_to_json(dist)}
                for name, value, dist in pending.params
            ])
        for model, attrs in ((models.TrialUserAttributeModel, pending.user_attrs),
                             (models.TrialSystemAttributeModel, pending.system_attrs)):
            if attrs:
                self._upsert(session, model, trial_id, attrs)

    def _upsert(self, session: Any, model: Any, trial_id: int, attrs: dict[str, Any]) -> None:
        """Insert or replace attributes with one statement (Optuna's own way costs a query per key)."""
        rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        dialect = self._backend.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            insert = (postgresql if dialect == "postgresql" else sqlite).insert(model)
            # Executed for many rows, so the compiled statement is cached whatever the number of keys.
            session.execute(insert.on_conflict_do_update(
                index_elements=[model.trial_id, model.key], set_={"value_json": insert.excluded.value_json}), rows)
            return
        for key, value in attrs.items():
            self._backend._set_trial_attr_without_commit(session, model, trial_id, key, value)

    def drop(self, trial_id: int) -> None:
        """Forget a trial that can no longer be written (another worker finished it)."""
        with self._flush_lock:
            self._pending.pop(trial_id, None)
            self._mirror.pop(trial_id, None)
            self._owned.discard(trial_id)

    # -- reads and state changes see the held writes first

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            number = self._trial_id_to_study_id_and_number[trial_id][1]
            created = copy.deepcopy(self._studies[study_id].trials[number])
        if created.state == TrialState.RUNNING:  # not a WAITING copy queued for whoever asks next
            with self._flush_lock:
                self._owned.add(trial_id)
                self._mirror[trial_id] = created
        return trial_id

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._flush_lock:
            # The mirror includes the held writes, so they may stay held (until the state change).
            local = self._finished.pop(trial_id, None) or self._mirror.get(trial_id)
            if local is not None:
                return copy.deepcopy(local)
            self.flush(trial_id)
        trial = super().get_trial(trial_id)
        with self._flush_lock:
            if trial_id in self._owned and trial.state == TrialState.RUNNING:
                self._mirror[trial_id] = copy.deepcopy(trial)
        return trial

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if self._no_waiting and isinstance(states, tuple) and states == (TrialState.WAITING,):
            self._no_waiting = False
            return []
        self.flush()
        return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        self.flush()
        return super().get_best_trial(study_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        with self._flush_lock:
            try:
                if state.is_finished():
                    done = self._finish(trial_id, state, values, self._pending.pop(trial_id, None))
                else:
                    self.flush(trial_id)
                    done = super().set_trial_state_values(trial_id, state=state, values=values)
            except Exception:
                self.drop(trial_id)
                raise
            if done and state == TrialState.RUNNING:
                self._owned.add(trial_id)  # claimed from the queue; Trial() reads it next
                self._mirror.pop(trial_id, None)
            mirror = self._mirror.pop(trial_id, None) if state.is_finished() else None
            if state.is_finished():
                self._owned.discard(trial_id)
            if done and mirror is not None:
                mirror.state = state
                mirror.values = None if values is None else [float(v) for v in values]
                mirror.datetime_complete = dt.datetime.now()
                self._finished = {trial_id: mirror}
        return done

    def _finish(self, trial_id: int, state: TrialState, values: Any, pending: _Pending | None) -> bool:
        """Optuna's ``set_trial_state_values`` for a finishing trial, with the held writes, in one transaction."""
        backend = self._backend
        try:
            with _create_scoped_session(backend.scoped_session) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                backend.check_trial_is_updatable(trial_id, trial.state)
                if pending is not None:
                    self._add_pending(session, trial_id, pending)
                for objective, value in enumerate(values or ()):
                    stored, value_type = models.TrialValueModel.value_to_stored_repr(value)
                    session.add(models.TrialValueModel(trial_id=trial_id, objective=objective, value=stored,
                                                       value_type=value_type))
                trial.state = state
                trial.datetime_complete = dt.datetime.now()
        except sa.exc.IntegrityError:
            return False
        return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._flush_lock:
            self.flush(trial_id)
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            if trial_id in self._mirror:
                self._mirror[trial_id].intermediate_values[step] = intermediate_value
