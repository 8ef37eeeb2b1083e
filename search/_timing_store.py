"""``squeeze_timings`` and ``squeeze_latencies``: candidates waiting to be timed on the study's target, and the networks measured there.

A candidate trained on a machine outside the study's latency target is stored with its accuracy and
artifact, and its trial stays RUNNING (so the global budget still counts it) with a job here. A job's
life: ``waiting`` -> ``timing`` (claimed by one worker of the target class, which beats its
``heartbeat``) -> ``done``, or ``failed`` when the candidate could not be timed (its trial then fails).

Jobs are claimed a network at a time: a claim takes every waiting job whose candidate builds the same
network (the same ``key``, :func:`squeeze.objectives.latency_key`), so two workers never time one
network at once, and the one measurement goes to all of them. A ``timing`` job whose heartbeat is older
than the study's ``grace_s`` (its worker was killed or cut off) is claimed again by the next worker of
the target class, its ``attempts`` counted. Claims are made under the study lock; results are stored only
by a claim's current owner. Times are the database's clock.

``squeeze_latencies`` keeps each network measured on the target, once per study, for every worker:
a later candidate of the same network takes that measurement wherever it was trained.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._owned import NOW, update_owned
from ._storage import Base, db_now

WAITING, TIMING, DONE, FAILED = "waiting", "timing", "done", "failed"
PENDING = (WAITING, TIMING)


class TimingRow(Base):
    """A candidate waiting to be timed on the study's target (or timed, or failed)."""

    __tablename__ = "squeeze_timings"
    study: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    trial: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int]
    key: Mapped[str] = mapped_column(sa.String(64), index=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    owner: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    heartbeat: Mapped[dt.datetime | None]
    attempts: Mapped[int]
    queued_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class MeasuredRow(Base):
    """A network measured on the study's target: one row per network key."""

    __tablename__ = "squeeze_latencies"
    study: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    trial: Mapped[int]
    """The trial whose candidate was timed."""
    latency: Mapped[str] = mapped_column(sa.Text)
    """The measurement (:class:`squeeze.objectives.Latency`'s fields) as JSON."""
    measured_at: Mapped[dt.datetime]


def queue_timing(engine: sa.Engine, study: str, *, trial: int, trial_id: int, key: str) -> None:
    """Leave ``trial`` waiting to be timed on the target (a second call for the same trial does nothing)."""
    with Session(engine) as s:
        if s.get(TimingRow, (study, trial)) is None:
            s.add(TimingRow(study=study, trial=trial, trial_id=trial_id, key=key, state=WAITING, owner=None,
                            heartbeat=None, attempts=0, queued_at=db_now(s.connection()), finished_at=None, error=None))
            s.commit()


def claim_timing(engine: sa.Engine, study: str, owner: str, *, grace_s: float) -> list[TimingRow]:
    """Claim the next network to time: the oldest waiting (or silent for ``grace_s``) job, and every
    other waiting or silent job of the same network. Returns the claimed rows, oldest first (none: nothing
    waits). Call it under the study lock."""
    with Session(engine) as s:
        now = db_now(s.connection())
        stale = now - dt.timedelta(seconds=grace_s)
        claimable = (TimingRow.state == WAITING) | ((TimingRow.state == TIMING) & (TimingRow.heartbeat < stale))
        first = s.scalars(
            sa.select(TimingRow).where(TimingRow.study == study, claimable)
            .order_by(TimingRow.queued_at, TimingRow.trial).limit(1)
        ).first()
        if first is None:
            return []
        key = first.key
        rows = list(s.scalars(
            sa.select(TimingRow).where(TimingRow.study == study, TimingRow.key == key, claimable)
            .order_by(TimingRow.queued_at, TimingRow.trial)
        ))
        for row in rows:
            row.state, row.owner, row.heartbeat, row.attempts = TIMING, owner, now, row.attempts + 1
        s.commit()
        for row in rows:
            s.refresh(row)
            s.expunge(row)
        return rows


def beat_timing(engine: sa.Engine, study: str, key: str, owner: str) -> bool:
    """Record that ``owner`` still times network ``key``; False when none of its jobs is its own any more."""
    return update_owned(engine, TimingRow, running=TIMING, study=study, owner=owner, key=key,
                        values={"heartbeat": NOW}) > 0


def end_timing(engine: sa.Engine, study: str, trial: int, owner: str, *, error: str | None = None) -> bool:
    """Mark ``owner``'s job of ``trial`` done (or failed with ``error``); False when the job is not its own."""
    values = {"state": FAILED if error else DONE, "error": error[:2000] if error else None, "finished_at": NOW}
    return update_owned(engine, TimingRow, running=TIMING, study=study, owner=owner, trial=trial, values=values) == 1


def release_timing(engine: sa.Engine, study: str, key: str, owner: str) -> None:
    """Give ``owner``'s jobs of ``key`` back (it was stopped): the next worker of the target takes them at once."""
    update_owned(engine, TimingRow, running=TIMING, study=study, owner=owner, key=key,
                 values={"state": WAITING, "owner": None, "heartbeat": None})


def pending_trials(engine: sa.Engine, study: str) -> set[int]:
    """Trials whose candidates wait to be timed or are being timed."""
    if not _exists(engine):
        return set()
    with Session(engine) as s:
        return set(s.scalars(sa.select(TimingRow.trial).where(TimingRow.study == study, TimingRow.state.in_(PENDING))))


def timing_counts(engine: sa.Engine, study: str) -> dict[str, int]:
    """Jobs by state (every state present, zeros included)."""
    counts = dict.fromkeys((WAITING, TIMING, DONE, FAILED), 0)
    if not _exists(engine):
        return counts
    with Session(engine) as s:
        for state, count in s.execute(
            sa.select(TimingRow.state, sa.func.count()).where(TimingRow.study == study).group_by(TimingRow.state)
        ):
            counts[state] = int(count)
    return counts


def measured(engine: sa.Engine, study: str, key: str) -> tuple[int, dict[str, Any]] | None:
    """(trial, measurement) of network ``key`` on the study's target, or None when it was never measured."""
    with Session(engine) as s:
        row = s.get(MeasuredRow, (study, key))
        return (row.trial, json.loads(row.latency)) if row is not None else None


def store_measured(engine: sa.Engine, study: str, key: str, *, trial: int, latency: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Keep the measurement of network ``key``; the first one stored wins, and is returned."""
    with Session(engine) as s:
        if s.get(MeasuredRow, (study, key)) is None:
            try:
                s.add(MeasuredRow(study=study, key=key, trial=trial, latency=json.dumps(latency),
                                  measured_at=db_now(s.connection())))
                s.commit()
            except sa.exc.IntegrityError:
                s.rollback()
    found = measured(engine, study, key)
    assert found is not None
    return found


def measured_count(engine: sa.Engine, study: str) -> int:
    if MeasuredRow.__tablename__ not in sa.inspect(engine).get_table_names():
        return 0
    with Session(engine) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(MeasuredRow).where(MeasuredRow.study == study)) or 0)


def _exists(engine: sa.Engine) -> bool:
    return TimingRow.__tablename__ in sa.inspect(engine).get_table_names()


def jobs(engine: sa.Engine, study: str, *, trials: Collection[int] | None = None) -> list[TimingRow]:
    """The study's timing jobs (of ``trials`` only, when given), by trial."""
    if not _exists(engine):
        return []
    with Session(engine) as s:
        query = sa.select(TimingRow).where(TimingRow.study == study).order_by(TimingRow.trial)
        if trials is not None:
            query = query.where(TimingRow.trial.in_(list(trials)))
        rows = list(s.scalars(query))
        for row in rows:
            s.expunge(row)
        return rows
