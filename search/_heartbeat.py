"""A worker's heartbeats: its own row in ``squeeze_workers`` and its running trial's, from a daemon thread.

Every ``study.heartbeat_s`` seconds the thread writes the running trial's pending writes and its
heartbeat (Optuna's ``trial_heartbeats``, which stale-trial sweeps read) and the worker's row (which
``squeeze status`` reads). A missed beat is not an error: the next may land, and the worst a long
silence costs is a retry of the trial.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from . import _worker_store as ws
from ._batched import BatchedStorage

if TYPE_CHECKING:
    from ._context import Context


class Heartbeat:
    """Beats for the worker (its ``squeeze_workers`` row) and its running trial, in a daemon thread."""

    def __init__(self, ctx: Context, worker_id: str, batched: BatchedStorage) -> None:
        self._engine = ctx.engine
        self._storage: RDBStorage = ctx.storage
        self._batched = batched
        self._worker_id = worker_id
        self._interval = ctx.spec.study.heartbeat_s
        self._trial: tuple[int, int] | None = None  # (trial id, number)
        self.completed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="squeeze-heartbeat", daemon=True)

    def start_trial(self, trial: optuna.Trial) -> None:
        """Beat for a newly claimed trial at once, writing what the claim holds (the sampler's attributes).

        The worker calls it under the study lock, so no other worker's sweep sees the trial without
        a heartbeat (and falls back to its start time: the claiming machine's clock, not the database's).
        """
        self._trial = (trial._trial_id, trial.number)
        self._beat_trial(trial._trial_id, flush=True)  # the worker's own row follows at the next beat

    def end_trial(self, state: TrialState) -> None:
        self._trial = None
        self.completed += state == TrialState.COMPLETE
        self.failed += state == TrialState.FAIL

    def _beat_trial(self, trial_id: int, *, flush: bool = False) -> None:
        try:
            if flush:
                # The trial's parameters so far become visible to other workers (and to its retry).
                self._batched.flush(trial_id)
            self._storage.record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - a missed beat only risks a retry; the next one may land
            pass

    def _beat_worker(self, state: str, trial: int | None) -> None:
        try:
            ws.beat_worker(self._engine, self._worker_id, state=state, trial=trial, completed=self.completed,
                           failed=self.failed)
        except Exception:  # noqa: BLE001 - as above; status shows the worker late, nothing else
            pass

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            current = self._trial
            if current is not None:
                self._beat_trial(current[0], flush=True)
            self._beat_worker("working" if current else "waiting", current[1] if current else None)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            ws.beat_worker(self._engine, self._worker_id, state="stopped", trial=None, completed=self.completed,
                           failed=self.failed)
        except Exception:  # noqa: BLE001 - its heartbeat ages out anyway
            pass
