"""The worker registry (``squeeze_workers``): one row per worker process that joined a study, with its heartbeat.

``squeeze status`` counts the live ones; times are the database's clock, not the machines'.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from squeeze.spaces import SqueezeError

from ._storage import STORAGE_ENV, Base, db_now


class WorkerRow(Base):
    __tablename__ = "squeeze_workers"
    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    worker: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16))  # "waiting", "working" or "stopped"
    trial: Mapped[int | None]
    completed: Mapped[int]
    failed: Mapped[int]
    started_at: Mapped[dt.datetime]
    heartbeat: Mapped[dt.datetime]



def register_worker(engine: sa.Engine, study: str, *, worker: int, sole: bool, within_s: float) -> str:
    """Add this process to the study's workers; returns its id.

    ``sole`` (SQLite): refuse when another worker of the study is alive (a heartbeat within
    ``within_s`` seconds, and, on this host, a running process): SQLite has one writer at a time.
    Call it under :func:`study_lock` so two starting workers cannot both pass the check.
    """
    host, pid = socket.gethostname()[:255], os.getpid()
    if sole:
        for other in live_workers(engine, study, within_s=within_s):
            if other.host == host and not _pid_alive(other.pid):
                continue
            raise SqueezeError(
                f"study {study!r} already has a live worker (pid {other.pid} on {other.host}) and its storage is "
                f"SQLite, which takes one writer at a time; use PostgreSQL (`--storage postgresql+psycopg://...` "
                f"or ${STORAGE_ENV}) for several workers, or wait until that one stops."
            )
    worker_id = uuid.uuid4().hex
    with Session(engine) as s:
        now = db_now(s.connection())
        s.add(WorkerRow(id=worker_id, study=study, host=host, pid=pid, worker=worker, state="waiting", trial=None,
                        completed=0, failed=0, started_at=now, heartbeat=now))
        s.commit()
    return worker_id


def beat_worker(engine: sa.Engine, worker_id: str, *, state: str, trial: int | None, completed: int,
                failed: int) -> None:
    """Record a worker's heartbeat, what it is doing, and its tallies."""
    with Session(engine) as s:
        s.execute(sa.update(WorkerRow).where(WorkerRow.id == worker_id).values(
            state=state, trial=trial, completed=completed, failed=failed, heartbeat=db_now(s.connection())))
        s.commit()


def live_workers(engine: sa.Engine, study: str, *, within_s: float) -> list[WorkerRow]:
    """The study's workers that have not stopped and beat within the last ``within_s`` seconds."""
    if "squeeze_workers" not in sa.inspect(engine).get_table_names():
        return []
    with Session(engine) as s:
        cutoff = db_now(s.connection()) - dt.timedelta(seconds=within_s)
        rows = list(s.scalars(
            sa.select(WorkerRow)
            .where(WorkerRow.study == study, WorkerRow.state != "stopped", WorkerRow.heartbeat >= cutoff)
            .order_by(WorkerRow.started_at)
        ))
        for r in rows:
            s.expunge(r)
        return rows


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
