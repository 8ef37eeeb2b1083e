"""``squeeze_finals``: one finalize job per (study, trial), and the finished artifact it leaves beside the trial's proxy.

A job's life: ``waiting`` (queued by ``squeeze finalize``) -> ``running`` (claimed by one process, which
beats its ``heartbeat``) -> ``done`` (the finished artifact and its figures stored) or ``failed`` (its
error kept; queueing it again retries it).

Exact once: a job is claimed under the study lock, so two processes never claim it together; a
running job whose heartbeat is older than the study's ``grace_s`` (its finalizer was killed or cut
off) is claimed again by the next process that asks, its ``attempts`` counted; and a result is stored
only by the job's current owner while it is running, so a finalizer that lost its job (it stalled
past the grace period and another took over) cannot store a second result. Times are the database's
clock, one clock for every machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, defer, mapped_column

from squeeze.spaces import SqueezeError

from ._owned import NOW, update_owned
from ._storage import Base, db_now

WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"


class FinalRow(Base):
    """A finalize job and, once done, the finished model: its bytes and its figures."""

    __tablename__ = "squeeze_finals"
    study: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    trial: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    epochs: Mapped[int]
    owner: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    heartbeat: Mapped[dt.datetime | None]
    attempts: Mapped[int]
    queued_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    proxy_accuracy: Mapped[float | None]
    """The trial's accuracy on the validation split (what chose the front)."""
    accuracy: Mapped[float | None]
    """The finished model's accuracy on the test split."""
    teacher_accuracy: Mapped[float | None]
    """The teacher's accuracy on the test split, for comparison."""
    size_bytes: Mapped[int | None]
    latency_ratio: Mapped[float | None]
    latency_ms: Mapped[float | None]
    sha256: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    artifact: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)


def queue_finals(engine: sa.Engine, study: str, proxies: Mapping[int, float], *, epochs: int) -> list[int]:
    """Queue a job for each trial of ``proxies`` (trial -> its validation accuracy); returns the trials queued now.

    A trial already queued, running or finished with the same epochs is left as it is (asking again
    never trains twice); a failed one is queued again. A trial queued or finished with other epochs
    is refused, naming it. Call it under the study lock.
    """
    queued = []
    with Session(engine) as s:
        now = db_now(s.connection())
        for trial, proxy in sorted(proxies.items()):
            row = s.get(FinalRow, (study, trial))
            if row is not None and row.state != FAILED and row.epochs != epochs:
                doing = "finished" if row.state == DONE else "queued for finalizing"
                raise SqueezeError(
                    f"trial {trial} of study {study!r} is already {doing} with {row.epochs} epochs, not {epochs}; "
                    f"a trial has one finished model, so ask for --epochs {row.epochs} (or leave --epochs out to use it)."
                )
            if row is None:
                s.add(FinalRow(study=study, trial=trial, state=WAITING, epochs=epochs, owner=None, heartbeat=None,
                               attempts=0, queued_at=now, finished_at=None, error=None, proxy_accuracy=proxy))
                queued.append(trial)
            elif row.state == FAILED:
                row.state, row.epochs, row.owner, row.error, row.queued_at = WAITING, epochs, None, None, now
                queued.append(trial)
        s.commit()
    return queued


def claim_final(engine: sa.Engine, study: str, owner: str, *, grace_s: float,
                only: Collection[int] | None = None) -> FinalRow | None:
    """Claim the next job of ``study`` for ``owner``: a waiting one, or a running one gone silent for ``grace_s``.

    ``only`` limits the jobs to those trials. Returns the claimed row (without its artifact), or None.
    Call it under the study lock.
    """
    with Session(engine) as s:
        now = db_now(s.connection())
        stale = now - dt.timedelta(seconds=grace_s)
        query = (
            sa.select(FinalRow).options(defer(FinalRow.artifact))
            .where(FinalRow.study == study,
                   (FinalRow.state == WAITING) | ((FinalRow.state == RUNNING) & (FinalRow.heartbeat < stale)))
            .order_by(FinalRow.queued_at, FinalRow.trial)
        )
        if only is not None:
            query = query.where(FinalRow.trial.in_(list(only)))
        row = s.scalars(query.limit(1)).first()
        if row is None:
            return None
        trial = row.trial
        # Conditional on what was read, so a claim never lands on a job that changed meanwhile.
        claimed = s.execute(
            sa.update(FinalRow)
            .where(FinalRow.study == study, FinalRow.trial == trial, FinalRow.state == row.state,
                   FinalRow.attempts == row.attempts)
            .values(state=RUNNING, owner=owner, heartbeat=now, attempts=row.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        s.commit()
    return get_final(engine, study, trial, artifact=False) if claimed == 1 else None


def beat_final(engine: sa.Engine, study: str, trial: int, owner: str) -> bool:
    """Record that ``owner`` is still working on the job; False when the job is no longer its own."""
    return update_owned(engine, FinalRow, running=RUNNING, study=study, owner=owner, trial=trial,
                        values={"heartbeat": NOW}) == 1


def finish_final(engine: sa.Engine, study: str, trial: int, owner: str, *, artifact: bytes, sha256: str, accuracy: float,
                 teacher_accuracy: float, size_bytes: int, latency_ratio: float, latency_ms: float) -> bool:
    """Store the finished model, only if ``owner`` still holds the running job; False (nothing stored) otherwise."""
    values = {"state": DONE, "artifact": artifact, "sha256": sha256, "accuracy": accuracy,
              "teacher_accuracy": teacher_accuracy, "size_bytes": size_bytes, "latency_ratio": latency_ratio,
              "latency_ms": latency_ms, "finished_at": NOW, "error": None}
    return update_owned(engine, FinalRow, running=RUNNING, study=study, owner=owner, trial=trial, values=values) == 1


def fail_final(engine: sa.Engine, study: str, trial: int, owner: str, *, error: str) -> bool:
    """Record why ``owner``'s job failed (one line); queueing it again retries it."""
    values = {"state": FAILED, "error": error[:2000], "finished_at": NOW}
    return update_owned(engine, FinalRow, running=RUNNING, study=study, owner=owner, trial=trial, values=values) == 1


def release_final(engine: sa.Engine, study: str, trial: int, owner: str) -> None:
    """Give a job back (its finalizer was interrupted): the next process takes it at once, not after the grace period."""
    update_owned(engine, FinalRow, running=RUNNING, study=study, owner=owner, trial=trial,
                 values={"state": WAITING, "owner": None, "heartbeat": None})


def get_final(engine: sa.Engine, study: str, trial: int, *, artifact: bool = True) -> FinalRow | None:
    """The job of ``trial``, with its artifact's bytes when ``artifact``; None when it was never queued."""
    with Session(engine) as s:
        query = sa.select(FinalRow).where(FinalRow.study == study, FinalRow.trial == trial)
        if not artifact:
            query = query.options(defer(FinalRow.artifact, raiseload=True))
        row = s.scalars(query).first()
        if row is not None:
            s.expunge(row)
        return row


def finals(engine: sa.Engine, study: str) -> list[FinalRow]:
    """Every finalize job of ``study``, without the artifacts' bytes; none when the table does not exist yet."""
    if FinalRow.__tablename__ not in sa.inspect(engine).get_table_names():
        return []
    with Session(engine) as s:
        rows = list(s.scalars(
            sa.select(FinalRow).options(defer(FinalRow.artifact, raiseload=True))
            .where(FinalRow.study == study).order_by(FinalRow.trial)
        ))
        for row in rows:
            s.expunge(row)
        return rows
