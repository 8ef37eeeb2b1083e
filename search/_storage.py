"""The study database: Optuna's RDB schema untouched, plus the project's own ``squeeze_`` tables.

- ``squeeze_schema``: one row, the version of these tables;
- ``squeeze_studies``: each study's config as submitted;
- ``squeeze_snapshots``: the Pareto front and its hypervolume every N completed trials;
- ``squeeze_artifacts``: each trial's stored bytes.

Each kind of claimed job keeps its table in a module of its own, on the same ``Base``: the teacher
(``_teacher_store``), the worker registry (``_worker_store``), finalize jobs (``_finals_store``) and
latency timings (``_timing_store``). Here too: URLs, engines, the schema version, and the locks.
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


def sqlite_file_exists(url: str) -> bool:
    """True when a SQLite URL names a database file that is already there (asking creates nothing)."""
    database = make_url(url).database
    return database not in (None, "", ":memory:") and Path(database).exists()


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
    parse_url(url)
    if is_sqlite(url) and not sqlite_file_exists(url):
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
