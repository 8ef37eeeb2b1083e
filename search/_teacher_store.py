"""The teacher's row (``squeeze_teachers``): claimed before training, so concurrent workers train it once.

One row per study: its state (``training`` while an owner holds the claim and beats its heartbeat, ``ready``
once stored), the checkpoint and its digest, and the teacher's measured figures. A claim whose owner stopped
beating is taken over.
"""

from __future__ import annotations

import datetime as dt
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._storage import Base, now


class TeacherRow(Base):
    __tablename__ = "squeeze_teachers"
    study: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16))  # "training" or "ready"
    owner: Mapped[str] = mapped_column(sa.String(128))
    heartbeat: Mapped[dt.datetime]
    weights: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    artifact: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    sha256: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    accuracy: Mapped[float | None]
    size_bytes: Mapped[int | None]
    latency_ms: Mapped[float | None]



def claim_teacher(engine: sa.Engine, study: str, owner: str, *, stale_after_s: float) -> TeacherRow | None:
    """Return the ready teacher row, or claim the right to train it (returns None then).

    Exactly one worker holds the claim; a claim whose holder stopped heart-beating for
    ``stale_after_s`` seconds passes to the next worker that asks. Others wait and poll.
    """
    while True:
        with Session(engine) as s:
            row = s.get(TeacherRow, study)
            if row is not None and row.state == "ready":
                s.expunge(row)
                return row
            if row is None:
                try:
                    s.add(TeacherRow(study=study, state="training", owner=owner, heartbeat=now(),
                                     accuracy=None, size_bytes=None, latency_ms=None))
                    s.commit()
                    return None
                except sa_exc.IntegrityError:
                    s.rollback()
                    continue
            if row.owner == owner:
                return None
            age = (now() - row.heartbeat).total_seconds()
            if age > stale_after_s:
                updated = s.execute(
                    sa.update(TeacherRow)
                    .where(TeacherRow.study == study, TeacherRow.owner == row.owner, TeacherRow.state == "training")
                    .values(owner=owner, heartbeat=now())
                )
                s.commit()
                if updated.rowcount == 1:
                    return None
        time.sleep(0.5)


def release_teacher(engine: sa.Engine, study: str, owner: str) -> None:
    """Give up a claim to train the teacher (its training was interrupted or failed): the next worker
    that asks claims it at once instead of waiting for the claim to go stale."""
    with Session(engine) as s:
        s.execute(sa.delete(TeacherRow).where(TeacherRow.study == study, TeacherRow.owner == owner,
                                              TeacherRow.state == "training"))
        s.commit()


def beat_teacher(engine: sa.Engine, study: str, owner: str) -> None:
    with Session(engine) as s:
        s.execute(sa.update(TeacherRow).where(TeacherRow.study == study, TeacherRow.owner == owner).values(heartbeat=now()))
        s.commit()


def store_teacher(engine: sa.Engine, study: str, owner: str, *, weights: bytes, artifact: bytes, sha256: str,
                  accuracy: float, size_bytes: int, latency_ms: float) -> None:
    with Session(engine) as s:
        s.execute(
            sa.update(TeacherRow)
            .where(TeacherRow.study == study, TeacherRow.owner == owner)
            .values(state="ready", weights=weights, artifact=artifact, sha256=sha256, accuracy=accuracy,
                    size_bytes=size_bytes, latency_ms=latency_ms, heartbeat=now())
        )
        s.commit()


def get_teacher(engine: sa.Engine, study: str) -> TeacherRow | None:
    with Session(engine) as s:
        row = s.get(TeacherRow, study)
        if row is None or row.state != "ready":
            return None
        s.expunge(row)
        return row
