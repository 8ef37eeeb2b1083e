"""The study database: Optuna's RDB schema untouched, plus the project's own ``squeeze_`` tables.

- ``squeeze_schema``: one row, the version of these tables;
- ``squeeze_studies``: each study's config as submitted;
- ``squeeze_teachers``: the teacher checkpoint (weights, sha256, measured figures), one row per
  study; the row is claimed before training, so concurrent workers train it once;
- ``squeeze_snapshots``: the Pareto front and its hypervolume every N completed trials;
- ``squeeze_workers``: one row per worker process that joined a study, with its heartbeat, so that
  ``squeeze status`` shows the live ones (times are the database's clock, not the machines').
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb import models as optuna_models
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from squeeze.spaces import SqueezeError

try:
    import fcntl
except ImportError:  # Windows: SQLite studies are then guarded by SQLite's own locking only
    fcntl = None  # type: ignore[assignment]

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


def _refuse_newer(version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise SqueezeError(
            f"the storage was written by a newer squeeze-search (schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade squeeze-search."
        )


def check_readable(url: str) -> None:
    """Refuse, before any work, a malformed URL or a database that a newer squeeze-search wrote; create nothing.

    A SQLite file that does not exist yet is fine (it is created when the study is); a PostgreSQL server is
    connected to, so an unreachable one is reported here rather than after the check and the data.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or not Path(parsed.database).exists()
    ):
        return
    engine = engine_for(url)
    try:
        if "squeeze_schema" in sa.inspect(engine).get_table_names():
            with engine.connect() as conn:
                _refuse_newer(conn.execute(sa.text("SELECT MAX(version) FROM squeeze_schema")).scalar())
    finally:
        engine.dispose()


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
        _refuse_newer(row.version if row is not None else None)


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
    """A cross-process lock per study.

    PostgreSQL: an advisory lock, held by one connection for the ``with`` block (it is released
    by the server if the process dies). SQLite (one machine by nature): an exclusive ``flock`` on a
    file beside the database, so local processes still get an exact budget.
    """
    with _named_lock(engine, f"squeeze:{study}"):
        yield


@contextlib.contextmanager
def schema_lock(engine: sa.Engine) -> Iterator[None]:
    """Serialize table creation: concurrent ``CREATE TABLE``s of a new database collide in PostgreSQL."""
    with _named_lock(engine, "squeeze:schema"):
        yield


@contextlib.contextmanager
def _named_lock(engine: sa.Engine, name: str) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        key = zlib.crc32(name.encode()) & 0x7FFFFFFF
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:" or fcntl is None:
        yield
        return
    path = Path(f"{database}-lock")  # beside SQLite's own -journal and -wal files
    with open(path, "a+b") as handle:
        # One lock file per database: a study lock and the schema lock never nest, so one file is enough.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- trials and workers
# Read-only views of Optuna's own tables (its schema is never changed): the worker loop needs counts
# and stale trials cheaply, without loading every trial of a large study.

_trials = sa.table("trials", sa.column("trial_id", sa.Integer), sa.column("number", sa.Integer),
                   sa.column("study_id", sa.Integer), sa.column("state", sa.String))
_RUNNING = sa.literal_column("'RUNNING'")  # an untyped literal: PostgreSQL stores the state as an enum
_heartbeats = sa.table("trial_heartbeats", sa.column("trial_id", sa.Integer), sa.column("heartbeat", sa.DateTime))


def db_now(conn: sa.Connection) -> dt.datetime:
    """The database's clock, as naive UTC: one clock for every machine of a study."""
    return _naive_utc(conn.execute(sa.select(sa.func.now())).scalar_one())


def trial_state_counts(engine: sa.Engine, study_id: int) -> dict[str, int]:
    """Trials of a study by state name (every state present, zeros included)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(_trials.c.state, sa.func.count()).where(_trials.c.study_id == study_id).group_by(_trials.c.state)
        ).all()
    counts = {name: 0 for name in ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")}
    for state, count in rows:
        counts[str(state).split(".")[-1]] = int(count)
    return counts


def stale_trials(engine: sa.Engine, study_id: int, *, grace_s: float) -> list[tuple[int, int]]:
    """(trial id, number) of running trials whose last heartbeat, or start if none, is older than ``grace_s``.

    Heartbeats are written with the database's clock (Optuna's ``record_heartbeat``) and compared
    with it. Optuna stores them without a zone, in the session's time zone on PostgreSQL (UTC on
    SQLite), so they are read back through ``timestamptz``, which names that zone.

    A trial's start is the claiming machine's clock, and what Optuna stores for it depends on its
    version (naive local time before optuna/optuna#6776, naive UTC since), so it is read through
    Optuna's own model, which gives this machine's local time either way, and compared with this
    machine's local clock.
    Workers beat under the study lock as they claim a trial, so only a trial whose worker died in
    the middle of its claim is judged by its start.
    """
    beat = _heartbeats.c.heartbeat
    if engine.dialect.name == "postgresql":
        beat = sa.cast(beat, postgresql.TIMESTAMP(timezone=True))
    with Session(engine) as s:
        now = db_now(s.connection())
        rows = s.execute(
            sa.select(_trials.c.trial_id, _trials.c.number, beat)
            .select_from(_trials.outerjoin(_heartbeats, _heartbeats.c.trial_id == _trials.c.trial_id))
            .where(_trials.c.study_id == study_id, _trials.c.state == _RUNNING)
        ).all()
        unbeaten = [trial_id for trial_id, _, beat_at in rows if beat_at is None]
        model = optuna_models.TrialModel
        started = {t.trial_id: t.datetime_start
                   for t in s.scalars(sa.select(model).where(model.trial_id.in_(unbeaten)))} if unbeaten else {}
    local_now = dt.datetime.now()
    grace = dt.timedelta(seconds=grace_s)
    out = []
    for trial_id, number, beat_at in rows:
        if beat_at is not None:
            stale = _naive_utc(beat_at) < now - grace
        else:
            start = started.get(trial_id)
            stale = start is not None and start < local_now - grace
        if stale:
            out.append((trial_id, number))
    return sorted(out)


def _naive_utc(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


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
