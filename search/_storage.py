"""The study database: Optuna's RDB schema untouched, plus the project's own ``squeeze_`` tables.

- ``squeeze_schema``: one row, the version of these tables;
- ``squeeze_studies``: each study's config as submitted;
- ``squeeze_teachers``: the teacher checkpoint (weights, sha256, measured figures), one row per
  study; the row is claimed before training, so concurrent workers train it once;
- ``squeeze_snapshots``: the Pareto front and its hypervolume every N completed trials.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from squeeze.spaces import SqueezeError

SCHEMA_VERSION = 1
STORAGE_ENV = "SQUEEZE_STORAGE"


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "squeeze_schema"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]


class StudyRow(Base):
    __tablename__ = "squeeze_studies"
    name: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    config: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime]


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


class SnapshotRow(Base):
    __tablename__ = "squeeze_snapshots"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(sa.String(512), index=True)
    completed: Mapped[int]
    front: Mapped[str] = mapped_column(sa.Text)
    hypervolume: Mapped[float]
    elapsed_s: Mapped[float | None]
    created_at: Mapped[dt.datetime]


class ArtifactRow(Base):
    __tablename__ = "squeeze_artifacts"
    study: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    trial: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def safe_url(url: str) -> str:
    """The URL with its password masked, for anything printed or logged."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown without anything after '@'
        head, at, tail = url.rpartition("@")
        return ("***@" + tail) if at else url


def resolve_url(url: str | None) -> str:
    """The storage URL: the given one, else the ``SQUEEZE_STORAGE`` environment variable."""
    return url or os.environ.get(STORAGE_ENV) or ""


def parse_url(url: str) -> URL:
    """Parse and check a storage URL; SQLite folders are created on demand."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise SqueezeError(
            f"`study.storage` must be a database URL such as sqlite:///studies/squeeze.db or "
            f"postgresql+psycopg://user@host/db, but got {safe_url(url)!r}."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise SqueezeError(
            f"`study.storage` must use sqlite or postgresql, but got {backend!r} in {safe_url(url)!r}."
        )
    return parsed


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def ensure_sqlite_folder(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def engine_for(url: str) -> sa.Engine:
    """A SQLAlchemy engine; connection failures become one sentence without the password."""
    parse_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if is_sqlite(url):
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = sa.create_engine(url, **kwargs)
        with engine.connect():
            pass
    except sa_exc.NoSuchModuleError:
        raise SqueezeError(f"no database driver for {safe_url(url)!r}; install psycopg for PostgreSQL.") from None
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DBAPIError) as exc:
        raise SqueezeError(
            f"cannot connect to the storage {safe_url(url)!r}: {_reason(exc)}."
        ) from None
    return engine


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
    return text.rstrip(".")


def create_tables(engine: sa.Engine) -> None:
    """Create the project's tables if missing (idempotent under concurrency) and check the version."""
    for attempt in range(5):
        try:
            Base.metadata.create_all(engine, checkfirst=True)
            break
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError):
            # Another worker created the same table between our check and our CREATE.
            time.sleep(0.2 * (attempt + 1))
    with Session(engine) as s:
        row = s.get(SchemaRow, 1)
        if row is None:
            try:
                s.add(SchemaRow(id=1, version=SCHEMA_VERSION))
                s.commit()
            except sa_exc.IntegrityError:
                s.rollback()
            row = s.get(SchemaRow, 1)
        if row is not None and row.version > SCHEMA_VERSION:
            raise SqueezeError(
                f"the storage was written by a newer squeeze-search (schema {row.version}, this one reads "
                f"{SCHEMA_VERSION}); upgrade squeeze-search."
            )


def save_config(engine: sa.Engine, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Store a study's config if new; return the config stored (the first one wins)."""
    with Session(engine) as s:
        row = s.get(StudyRow, name)
        if row is None:
            try:
                s.add(StudyRow(name=name, config=json.dumps(config, sort_keys=True), created_at=now()))
                s.commit()
            except sa_exc.IntegrityError:
                s.rollback()
            row = s.get(StudyRow, name)
        assert row is not None
        return json.loads(row.config)


def load_config(engine: sa.Engine, name: str) -> dict[str, Any] | None:
    with Session(engine) as s:
        row = s.get(StudyRow, name)
        return json.loads(row.config) if row else None


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


def add_snapshot(engine: sa.Engine, study: str, *, completed: int, front: list[int], hypervolume: float,
                 elapsed_s: float | None) -> None:
    with Session(engine) as s:
        exists = s.scalar(
            sa.select(sa.func.count()).select_from(SnapshotRow).where(SnapshotRow.study == study, SnapshotRow.completed == completed)
        )
        if exists:
            return
        s.add(SnapshotRow(study=study, completed=completed, front=json.dumps(front), hypervolume=hypervolume,
                          elapsed_s=elapsed_s, created_at=now()))
        s.commit()


def snapshots(engine: sa.Engine, study: str) -> list[SnapshotRow]:
    with Session(engine) as s:
        rows = list(s.scalars(sa.select(SnapshotRow).where(SnapshotRow.study == study).order_by(SnapshotRow.completed)))
        for r in rows:
            s.expunge(r)
        return rows


def row_counts(engine: sa.Engine) -> dict[str, int]:
    """Rows in every table of the database (tests use it to prove nothing was written)."""
    inspector = sa.inspect(engine)
    out = {}
    with engine.connect() as conn:
        for table in inspector.get_table_names():
            out[table] = conn.execute(sa.text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one()
    return out


@contextlib.contextmanager
def study_lock(engine: sa.Engine, study: str) -> Iterator[None]:
    """A cross-process lock per study: a PostgreSQL advisory lock; SQLite's own write lock."""
    if engine.dialect.name == "postgresql":
        key = zlib.crc32(f"squeeze:{study}".encode()) & 0x7FFFFFFF
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


def store_artifact(engine: sa.Engine, study: str, trial: int, data: bytes, sha256: str) -> None:
    """Keep a completed trial's artifact: the very bytes its size was measured on."""
    with Session(engine) as s:
        s.merge(ArtifactRow(study=study, trial=trial, sha256=sha256, data=data))
        s.commit()


def get_artifact(engine: sa.Engine, study: str, trial: int) -> ArtifactRow | None:
    with Session(engine) as s:
        row = s.get(ArtifactRow, (study, trial))
        if row is not None:
            s.expunge(row)
        return row
