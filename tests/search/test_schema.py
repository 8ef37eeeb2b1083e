"""The project's own tables: a schema version, a clear refusal of newer databases, idempotent creation.

Each test runs on SQLite and on PostgreSQL (a database of its own, since these tests change the
schema row that every other test relies on).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeeze.search import _storage
from squeeze.search._cli import main
from squeeze.spaces import SqueezeError

PG_ENV = "SQUEEZE_TEST_POSTGRES"
OWN_TABLES = {"squeeze_schema", "squeeze_studies", "squeeze_teachers", "squeeze_snapshots", "squeeze_artifacts"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("SQUEEZE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"SQUEEZE_REQUIRE_POSTGRES=1 but {PG_ENV} is not set")
        pytest.skip(f"PostgreSQL tests need {PG_ENV}")
    from conftest import fresh_pg_database

    with fresh_pg_database(base, prefix="squeeze_schema") as url:
        yield url


def _schema_rows(url: str) -> list[tuple[int, int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT id, version FROM squeeze_schema"))]
    finally:
        engine.dispose()


def test_tables_carry_the_schema_version(empty_url: str) -> None:
    engine = _storage.engine_for(empty_url)
    _storage.create_tables(engine)
    _storage.create_tables(engine)  # a second time changes nothing
    engine.dispose()
    assert OWN_TABLES <= set(sa.inspect(sa.create_engine(empty_url)).get_table_names())
    assert _schema_rows(empty_url) == [(1, _storage.SCHEMA_VERSION)]


def test_a_newer_database_is_refused_in_one_sentence(empty_url: str, tiny_study, capfd) -> None:
    engine = _storage.engine_for(empty_url)
    _storage.create_tables(engine)
    newer = _storage.SCHEMA_VERSION + 1
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE squeeze_schema SET version = :v"), {"v": newer})
    with pytest.raises(SqueezeError, match=rf"schema {newer}, this one reads {_storage.SCHEMA_VERSION}"):
        _storage.create_tables(engine)
    before = _storage.row_counts(engine)

    for command in ("run", "worker"):
        code = main([command, str(tiny_study(storage=empty_url))])
        out, err = capfd.readouterr()
        assert code == 2 and "Traceback" not in out + err, (out, err)
        if command == "run":
            assert err.strip() == (
                f"error: the storage was written by a newer squeeze-search (schema {newer}, this one reads "
                f"{_storage.SCHEMA_VERSION}); upgrade squeeze-search."
            )
    assert _storage.row_counts(engine) == before, "nothing is written to a newer database"
    engine.dispose()


def test_concurrent_create_tables_is_idempotent(empty_url: str) -> None:
    """Eight workers that start at once on an empty database: every one succeeds, one schema row results."""
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker() -> None:
        engine = sa.create_engine(empty_url, **({"connect_args": {"timeout": 60}} if empty_url.startswith("sqlite") else {}))
        try:
            barrier.wait()
            _storage.create_tables(engine)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert OWN_TABLES <= set(sa.inspect(sa.create_engine(empty_url)).get_table_names())
    assert _schema_rows(empty_url) == [(1, _storage.SCHEMA_VERSION)]


def test_concurrent_create_tables_across_processes(empty_url: str) -> None:
    """The same with separate processes, as workers on separate machines are."""
    code = (
        "import sys, time, sqlalchemy as sa\n"
        "from squeeze.search import _storage\n"
        "engine = sa.create_engine(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "_storage.create_tables(engine)\n"
    )
    import time

    start = time.time() + 6  # after every process has imported squeeze
    procs = [subprocess.Popen([sys.executable, "-c", code, empty_url, str(start)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    assert _schema_rows(empty_url) == [(1, _storage.SCHEMA_VERSION)]
