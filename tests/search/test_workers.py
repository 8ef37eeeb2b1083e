"""Workers as real processes on a real PostgreSQL: exact budgets, kills, restarts, signals, bad URLs.

The workers run ``_cheap_worker.py`` (30 suggested parameters, a short sleep, a formula), so these
tests are about workers, not networks. Heartbeats are 1 s and the grace period 3 s here, set in
the study file like any other key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import squeeze.search as ss

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _cheap_worker  # noqa: E402

HEARTBEAT_S, GRACE_S = 1, 3
SECRET = "s3cretpw"


def _forks() -> multiprocessing.context.BaseContext:
    """A fork server that has imported torch, Optuna and the worker once: each worker then starts in
    milliseconds as its own process (a fork), instead of spending seconds importing."""
    global _FORKS
    if _FORKS is None:
        _FORKS = multiprocessing.get_context("forkserver")
        _FORKS.set_forkserver_preload(["_cheap_worker", "psycopg", "squeeze.search"])
    return _FORKS


_FORKS: multiprocessing.context.BaseContext | None = None


class Worker:
    """A ``_cheap_worker.py`` process; what it prints is read back line by line from a file."""

    def __init__(self, study: Path, *, worker: int = 0, sleep: float = 0.2, args: tuple[str, ...] = ()) -> None:
        self.output = study.parent / f"worker-{uuid.uuid4().hex[:8]}.out"
        argv = [str(study), "--worker", str(worker), "--sleep", str(sleep), *args]
        self.proc = _forks().Process(target=_cheap_worker.child, args=(argv, str(self.output)))
        self.proc.start()

    @property
    def text(self) -> str:
        return self.output.read_text() if self.output.exists() else ""

    @property
    def lines(self) -> list[dict]:
        out = []
        for line in self.text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def started(self) -> list[int]:
        return [line["start"] for line in self.lines if "start" in line]

    def wait_for_start(self, *, after: int = 0, timeout: float = 60) -> int:
        """Wait until this worker starts its ``after + 1``-th trial; return that trial's number."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            started = self.started()
            if len(started) > after:
                return started[after]
            assert self.proc.is_alive(), f"worker exited early: {self.text}"
            time.sleep(0.02)
        raise AssertionError(f"no trial started within {timeout} s")

    def finish(self, timeout: float = 120) -> int | None:
        self.proc.join(timeout)
        assert not self.proc.is_alive(), f"worker still running after {timeout} s: {self.text}"
        return self.proc.exitcode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.proc.pid, sig)


@pytest.fixture
def pg_study(pg_url: str, tiny_study):
    """A study file on the test database, with short heartbeats; returns (path, name)."""

    def make(*, trials: int, name: str | None = None) -> tuple[Path, str]:
        name = name or f"w{uuid.uuid4().hex[:8]}"
        path = tiny_study(name=name, storage=pg_url, trials=trials)
        text = path.read_text().replace("[study]\n", f"[study]\nheartbeat_s = {HEARTBEAT_S}\ngrace_s = {GRACE_S}\n", 1)
        path.write_text(text)
        return path, name

    return make


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def by_state(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    return counts


def create(path: Path) -> None:
    from squeeze.search import load_spec
    from squeeze.search._context import connect

    connect(load_spec(path), create=True).engine.dispose()


def test_four_workers_meet_a_budget_of_40_exactly(pg_url: str, pg_study) -> None:
    path, name = pg_study(trials=40)
    create(path)
    # Every 9th trial raises: it is recorded FAIL with its error, and does not count against the budget.
    workers = [Worker(path, worker=i, sleep=0.3, args=("--fail-every", "9")) for i in range(4)]
    assert [w.finish() for w in workers] == [0, 0, 0, 0], [w.text for w in workers]
    trials = trials_of(pg_url, name)
    counts = by_state(trials)
    assert counts["COMPLETE"] == 40
    assert counts["RUNNING"] == counts["WAITING"] == 0
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == 40 + counts["FAIL"]
    assert all(t.values is not None and len(t.values) == 3 for t in trials if t.state == TrialState.COMPLETE)
    assert all(len(t.params) == 30 for t in trials if t.state == TrialState.COMPLETE)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["error"] == f"ValueError: planned failure of trial {t.number}" for t in failed)
    assert sum(w.lines[-1]["completed"] for w in workers) == 40
    assert all(len(w.started()) > 0 for w in workers), "every worker should have taken trials"


def test_a_killed_workers_trial_fails_after_the_grace_period_and_is_retried_once(pg_url: str, pg_study) -> None:
    path, name = pg_study(trials=12)
    create(path)
    trial_s = 1.0
    workers = [Worker(path, worker=i, sleep=trial_s) for i in range(4)]
    victim = workers[0]
    number = victim.wait_for_start()
    victim.kill(signal.SIGKILL)
    killed_at = dt.datetime.now()
    assert victim.finish() == -signal.SIGKILL
    assert [w.finish() for w in workers[1:]] == [0, 0, 0], [w.text for w in workers[1:]]

    trials = trials_of(pg_url, name)
    counts = by_state(trials)
    assert counts["COMPLETE"] == 12 and counts["RUNNING"] == 0 and counts["WAITING"] == 0
    dead = next(t for t in trials if t.number == number)
    assert dead.state == TrialState.FAIL
    assert "stopped heart-beating" in dead.user_attrs["error"]
    delay = (dead.datetime_complete - killed_at).total_seconds()
    # Failed once its last beat (at most one interval before the kill) is GRACE_S old, at the next
    # claim of a live worker (at most one trial later), with a little slack for a busy machine.
    assert GRACE_S - HEARTBEAT_S - 0.5 <= delay <= GRACE_S + HEARTBEAT_S + trial_s + 2.0, delay
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert len(retries) == 1
    assert len(dead.params) == 30
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params

    shown = subprocess.run([sys.executable, "-m", "squeeze.search", "status", name, "--storage", pg_url],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert _row(shown.stdout, "retried trials") == "1"
    assert _row(shown.stdout, "trials complete") == "12"
    assert _row(shown.stdout, "trials fail") == "1"


def _row(table: str, label: str) -> str:
    line = next(line for line in table.splitlines() if label in line)
    return line.replace("│", " ").replace("|", " ").split()[-1]


def test_killing_every_worker_then_starting_one_finishes_the_study(pg_url: str, pg_study) -> None:
    path, name = pg_study(trials=10)
    create(path)
    # The first dies (SIGKILL, by its own hand) as soon as it has chosen its second trial's
    # parameters, long before a heartbeat could write them (its first trial runs 0.2 s, its
    # heartbeats are 1 s apart); the others are killed as their first trial starts.
    workers = [Worker(path, worker=0, sleep=0.2, args=("--die-at-start", "2")),
               *(Worker(path, worker=i, sleep=1.5) for i in (1, 2))]
    workers[0].wait_for_start(after=1)
    for w in workers[1:]:
        w.wait_for_start()
        w.kill(signal.SIGKILL)
    assert [w.finish() for w in workers] == [-signal.SIGKILL] * 3
    stale = [t for t in trials_of(pg_url, name) if t.state == TrialState.RUNNING]
    assert len(stale) == 3
    # What a retry copies: every parameter the dead trial had been given.
    assert [len(t.params) for t in stale] == [30, 30, 30]
    last_before = max(t.number for t in trials_of(pg_url, name))
    time.sleep(GRACE_S + 0.5)  # the dead workers' heartbeats are now past the grace period

    again = Worker(path, worker=7, sleep=0.05)
    assert again.finish() == 0, again.text
    trials = trials_of(pg_url, name)
    counts = by_state(trials)
    assert counts["COMPLETE"] == 10 and counts["RUNNING"] == 0 and counts["WAITING"] == 0
    failed = [t for t in trials if t.number in {s.number for s in stale}]
    assert all(t.state == TrialState.FAIL for t in failed)
    failed_by = max(t.datetime_complete for t in failed)
    new = [t for t in trials if t.number > last_before]
    assert new and all(t.datetime_start >= failed_by for t in new), "a new trial began before the stale ones failed"
    # Each stale trial was retried once, first, with its own parameters.
    retried = {t.system_attrs.get("failed_trial"): t for t in new if "failed_trial" in t.system_attrs}
    assert set(retried) == {t.number for t in stale}
    assert all(retried[t.number].params == t.params for t in stale)
    assert all(retried[t.number].state == TrialState.COMPLETE for t in stale)


@contextlib.contextmanager
def _time_zone(zone: str) -> Iterator[None]:
    """This process's local time zone (what ``datetime.now()`` reads) set to ``zone``, then put back."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])
def test_stale_trials_are_found_whatever_the_local_and_database_time_zones(zone: str, backend: str,
                                                                          tmp_path: Path, request) -> None:
    # Optuna stamps a trial's start with this machine's local time, and (on PostgreSQL) its
    # heartbeats with the database session's zone: both are set away from UTC here, on either side.
    from conftest import fresh_pg_database

    from optuna.storages._rdb import models
    from sqlalchemy.orm import Session

    from squeeze.search._storage import stale_trials

    grace_s, old = 60, dt.timedelta(seconds=120)
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(fresh_pg_database(request.getfixturevalue("pg_url"), prefix="squeeze_tz"))
            admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f"ALTER DATABASE \"{sa.engine.make_url(url).database}\" SET timezone = '{zone}'"))
            admin.dispose()
        else:
            url = f"sqlite:///{tmp_path / 'tz.db'}"
        stack.enter_context(_time_zone(zone))
        storage = optuna.storages.RDBStorage(url)
        stack.callback(storage.engine.dispose)
        study = optuna.create_study(storage=storage, directions=["maximize", "minimize", "minimize"])
        fresh_start, old_start, fresh_beat, old_beat = (study.ask()._trial_id for _ in range(4))
        for trial_id in (fresh_beat, old_beat):
            storage.record_heartbeat(trial_id)
        engine = sa.create_engine(url)
        stack.callback(engine.dispose)
        # Two minutes taken off one start and one heartbeat, each as its writer wrote it: the start
        # through Optuna's own model (what it stores for a local time depends on its version), the
        # beat as the database's clock stored it (a typed column, as SQLite stores text).
        with Session(engine) as s, s.begin():
            s.get(models.TrialModel, old_start).datetime_start = dt.datetime.now() - old
            beats = sa.table("trial_heartbeats", sa.column("trial_id", sa.Integer), sa.column("heartbeat", sa.DateTime))
            beat = s.execute(sa.select(beats.c.heartbeat).where(beats.c.trial_id == old_beat)).scalar_one()
            s.execute(sa.update(beats).where(beats.c.trial_id == old_beat).values(heartbeat=beat - old))
        stale = [trial_id for trial_id, _ in stale_trials(engine, study._study_id, grace_s=grace_s)]
    assert stale == [old_start, old_beat]


def test_eight_processes_create_the_same_new_study_at_once_and_train_one_teacher(pg_url: str, tiny_study) -> None:
    # A database of its own, so that the table creation races too.
    from conftest import fresh_pg_database

    with fresh_pg_database(pg_url, prefix="squeeze_race") as url:
        path = tiny_study(name="race", storage=url, trials=2)
        procs = [Worker(path, args=("--mode", "teacher")) for _ in range(8)]
        assert [p.finish(timeout=300) for p in procs] == [0] * 8, [p.text[-2000:] for p in procs]
        said = [p.lines[-1] for p in procs]
        assert sum(s["trained"] for s in said) == 1
        assert len({s["sha256"] for s in said}) == 1
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM studies WHERE study_name = 'race'")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT COUNT(*) FROM squeeze_teachers")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT COUNT(*) FROM squeeze_studies")).scalar_one() == 1
        engine.dispose()


def test_bad_storage_urls_end_in_one_sentence_without_the_password(pg_url: str, pg_study) -> None:
    path, _ = pg_study(trials=2, name="nosuch")
    server = sa.engine.make_url(pg_url)
    with_password = server.set(password=SECRET)
    cases = {
        "missing database": with_password.set(database=f"nodb_{uuid.uuid4().hex[:6]}"),
        "unreachable host": with_password.set(port=1),
        "missing study": with_password,
    }
    procs = {}
    for case, url in cases.items():
        text = url.render_as_string(hide_password=False)
        # One passes the URL on the command line, the others through $SQUEEZE_STORAGE.
        argv = ["--storage", text] if case == "missing database" else []
        env = dict(os.environ) | ({} if argv else {"SQUEEZE_STORAGE": text})
        procs[case] = subprocess.Popen([sys.executable, "-m", "squeeze.search", "worker", str(path), *argv],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        shown = out + err
        assert proc.returncode == 2, (case, shown)
        assert SECRET not in shown, (case, shown)
        assert "Traceback" not in shown, (case, shown)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (case, err)
        assert errors[0].rstrip().endswith("."), (case, errors[0])
        if case == "missing study":
            assert "does not exist" in errors[0] and "squeeze run" in errors[0]
        else:
            assert "cannot connect to the storage" in errors[0]


def test_sigterm_fails_the_running_trial_cleanly_and_exits_0(pg_url: str, pg_study) -> None:
    path, name = pg_study(trials=5)
    create(path)
    worker = Worker(path, sleep=3.0)
    number = worker.wait_for_start()
    status = ss.status(name, storage=pg_url)
    assert status.live_workers == 1 and status.counts["RUNNING"] == 1
    worker.kill(signal.SIGTERM)
    assert worker.finish(timeout=30) == 0, worker.text
    assert worker.lines[-1]["interrupted"] is True
    trials = trials_of(pg_url, name)
    trial = next(t for t in trials if t.number == number)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"].startswith("interrupted (SIGTERM)")
    # Nothing was wrong with its parameters: it waits, once, for the next worker.
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["failed_trial"] for t in waiting] == [number]
    assert by_state(trials)["RUNNING"] == 0


def test_several_local_workers_on_sqlite_are_refused_with_a_pointer_to_postgresql(tiny_study) -> None:
    path = tiny_study(name="lite")
    shown = subprocess.run([sys.executable, "-m", "squeeze.search", "run", str(path), "--workers", "2"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2
    assert "Traceback" not in shown.stderr
    assert "postgresql" in shown.stderr.lower() and "sqlite" in shown.stderr.lower()
    assert not (path.parent / "studies.db").exists(), "nothing should be written"
