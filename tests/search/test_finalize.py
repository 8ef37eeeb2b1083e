"""``squeeze finalize``: a trial's plan trained to the end, measured on the test split, stored once.

The end-to-end tests run a tiny digits study; the exact-once claim is tested on SQLite and
PostgreSQL; a finalizer killed with SIGKILL mid-way is taken over on PostgreSQL and finishes once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import squeeze.search as ss
from squeeze.objectives import accuracy, decode, load_task
from squeeze.search import _finals_store as fs
from squeeze.search import _storage as st
from squeeze.search._cli import main
from squeeze.spaces import SqueezeError

FINALIZE = """
[finalize]
epochs = {epochs}
qat_steps = 5
"""


def _cli(capfd, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny digits study with three completed trials, shared by the SQLite tests of this module (read-mostly)."""
    from conftest import TINY_STUDY

    folder = tmp_path_factory.mktemp("finalize")
    path = folder / "tiny.toml"
    path.write_text(TINY_STUDY.format(name="tiny", storage=f"sqlite:///{folder / 'studies.db'}", trials=3,
                                      references="false") + FINALIZE.format(epochs=1), encoding="utf-8")
    ss.run(path)
    return path


def _engine(path: Path) -> sa.Engine:
    return st.engine_for(ss.load_spec(path).study.storage)


def test_finalize_trains_once_measures_on_test_and_exports_the_finished_artifact(study: Path, tmp_path: Path,
                                                                                   capfd) -> None:
    code, out, _ = _cli(capfd, "finalize", str(study), "--trial", "1")
    assert code == 0 and "finished acc" in out
    done = ss.finished(study)
    assert set(done) == {1} and done[1].attempts == 1 and done[1].epochs == 1
    spec = ss.load_spec(study)
    data = load_task("digits", options={}, seed=spec.study.seed, holdout=spec.task.holdout, test=spec.task.test,
                     data_dir=None)
    # The finished artifact's accuracy is its accuracy on the test split, measured on its own bytes.
    row = fs.get_final(_engine(study), "tiny", 1)
    loaded = decode(row.artifact)
    assert loaded.card["finished"] is True and loaded.card["accuracy_split"] == "test" and loaded.card["epochs"] == 1
    assert accuracy(loaded.module, data.x_test, data.y_test) == done[1].accuracy == loaded.card["accuracy"]
    assert done[1].proxy_accuracy == {p.number: p.accuracy for p in ss.front(study).points}[1]

    # Asking again trains nothing: the same bytes, one claim.
    again = ss.finalize(study, trials=[1])
    assert again[0].sha256 == done[1].sha256 and again[0].attempts == 1

    # pareto shows both accuracies; export --final writes the finished bytes, export the proxy's.
    code, out, _ = _cli(capfd, "pareto", str(study), "--all")
    assert code == 0 and "finished acc (test)" in out and f"{done[1].accuracy:.4f}" in out
    final, proxy = tmp_path / "final.squeeze", tmp_path / "proxy.squeeze"
    assert _cli(capfd, "export", str(study), "--trial", "1", "--final", "-o", str(final))[0] == 0
    assert _cli(capfd, "export", str(study), "--trial", "1", "-o", str(proxy))[0] == 0
    assert final.read_bytes() == row.artifact and proxy.read_bytes() != row.artifact


@pytest.mark.parametrize(("argv", "message"), [
    (["--trial", "1", "--front"], r"takes --trial N \(one or more\) or --front, not both and not neither"),
    ([], r"takes --trial N \(one or more\) or --front, not both and not neither"),
    (["--trial", "99"], r"trial 99 does not exist in study 'tiny' \(it has trials 0 to 2\)"),
    (["--trial", "0", "--epochs", "0"], r"`--epochs` must be a whole number of epochs from 1 to 10000, but got 0"),
    (["--trial", "1", "--epochs", "3"], None),
])
def test_bad_finalize_input_is_one_sentence_and_writes_nothing(study: Path, argv: list[str], message: str | None,
                                                              capfd) -> None:
    if message is None:
        ss.finalize(study, trials=[1])  # finished with the file's 1 epoch: 3 epochs is another model
        message = r"trial 1 of study 'tiny' is already finished with 1 epochs, not 3"
    before = st.row_counts(_engine(study))
    code, _, err = _cli(capfd, "finalize", str(study), *argv)
    assert code == 2 and re.search(message, err.replace("\n", " ")), err
    assert st.row_counts(_engine(study)) == before


def test_export_final_of_a_trial_never_finalized_says_how(study: Path, tmp_path: Path, capfd) -> None:
    code, _, err = _cli(capfd, "export", str(study), "--trial", "2", "--final", "-o", str(tmp_path / "x.squeeze"))
    assert code == 2 and "trial 2 of study 'tiny' was never finalized; run `squeeze finalize" in err
    assert not (tmp_path / "x.squeeze").exists()


def test_a_worker_takes_the_waiting_finalize_jobs(study: Path) -> None:
    engine = _engine(study)
    fs.queue_finals(engine, "tiny", {0: 0.5}, epochs=1)
    ss.work(study)  # the trial budget is met: the worker goes on to the waiting job
    assert fs.get_final(engine, "tiny", 0, artifact=False).state == fs.DONE


def test_a_study_created_before_the_test_split_is_read_only(study: Path, tmp_path: Path, capfd) -> None:
    # A copy of the database whose stored config lacks `task.test`, as every study stored before it had.
    old = tmp_path / "old.db"
    old.write_bytes(Path(str(ss.load_spec(study).study.storage).removeprefix("sqlite:///")).read_bytes())
    engine = st.engine_for(f"sqlite:///{old}")
    with engine.begin() as conn:
        config = json.loads(conn.execute(sa.text("SELECT config FROM squeeze_studies")).scalar_one())
        del config["task"]["test"]
        conn.execute(sa.text("UPDATE squeeze_studies SET config = :c"), {"c": json.dumps(config)})
    storage = ["--storage", f"sqlite:///{old}"]
    for command in (["finalize", str(study), "--trial", "1"], ["run", str(study)]):
        code, _, err = _cli(capfd, *command, *storage)
        assert code == 2 and "was created before studies had a test split" in err.replace("\n", " ")
        assert "opens read-only" in err.replace("\n", " ")
    assert _cli(capfd, "pareto", str(study), *storage)[0] == 0
    assert _cli(capfd, "status", str(study), *storage)[0] == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'claims.db'}"
    return request.getfixturevalue("pg_url")


def test_a_job_is_claimed_once_and_stored_only_by_its_owner(url: str) -> None:
    engine = st.engine_for(url)
    st.create_tables(engine)
    study = f"claims-{os.getpid()}-{time.monotonic_ns()}"
    assert fs.queue_finals(engine, study, {3: 0.9}, epochs=2) == [3]
    assert fs.queue_finals(engine, study, {3: 0.9}, epochs=2) == []  # queued already: nothing new
    a = fs.claim_final(engine, study, "a", grace_s=60)
    assert a is not None and a.trial == 3 and a.attempts == 1
    assert fs.claim_final(engine, study, "b", grace_s=60) is None  # running and beating: not B's
    # A goes silent past the grace period (killed, or stalled): B takes the job over.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE squeeze_finals SET heartbeat = :t WHERE study = :s"),
                     {"t": st.db_now(conn) - dt.timedelta(seconds=120), "s": study})
    b = fs.claim_final(engine, study, "b", grace_s=60)
    assert b is not None and b.attempts == 2
    figures = dict(artifact=b"x", sha256="0" * 64, accuracy=0.9, teacher_accuracy=0.95, size_bytes=1,
                   latency_ratio=0.5, latency_ms=0.1)
    assert not fs.beat_final(engine, study, 3, "a")
    assert not fs.finish_final(engine, study, 3, "a", **figures)  # A's late result is dropped
    assert fs.finish_final(engine, study, 3, "b", **figures)
    assert not fs.finish_final(engine, study, 3, "b", **figures)  # done: never stored twice
    rows = fs.finals(engine, study)
    assert [(r.trial, r.state, r.owner, r.attempts) for r in rows] == [(3, fs.DONE, "b", 2)]
    assert fs.claim_final(engine, study, "c", grace_s=0) is None


def _claimed(engine: sa.Engine, study: str, trial: int, attempts: int) -> fs.FinalRow:
    """The job once its ``attempts``-th claim is running (a finalizer started and beats), within two minutes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = fs.get_final(engine, study, trial, artifact=False)
        if row is not None and row.state == fs.RUNNING and row.attempts == attempts:
            return row
        time.sleep(0.2)
    raise AssertionError(f"no finalizer claimed the job for the {attempts}. time")


def test_a_finalizer_killed_mid_way_is_taken_over_and_finishes_once(pg_url: str, tiny_study) -> None:
    # Enough epochs that the job is still training when the signals come, on a fast machine too (20 finished
    # within two seconds there, and the SIGTERM met a process whose job was already done).
    path = tiny_study(name="killed", storage=pg_url, trials=2, extra=FINALIZE.format(epochs=80))
    # Beats every second, stale after two: the takeover comes quickly.
    path.write_text(path.read_text().replace("snapshot_every = 2", "snapshot_every = 2\nheartbeat_s = 1\ngrace_s = 2"))
    ss.run(path)
    engine = st.engine_for(pg_url)
    command = [sys.executable, "-m", "squeeze.search", "finalize", str(path), "--trial", "0"]

    # SIGTERM: the job is given back at once, for the next finalizer to take without waiting.
    stopped = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _claimed(engine, "killed", 0, attempts=1)
    time.sleep(0.5)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 130
    given_back = fs.get_final(engine, "killed", 0, artifact=False)
    assert (given_back.state, given_back.owner, given_back.attempts) == (fs.WAITING, None, 1)

    # SIGKILL mid-way: nothing is given back; the job stays running until its heartbeat goes stale.
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        row = _claimed(engine, "killed", 0, attempts=2)
        time.sleep(1.5)  # mid-way through training, a heartbeat in
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert fs.get_final(engine, "killed", 0, artifact=False).state == fs.RUNNING
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "taking over a finalize job whose finalizer stopped (attempt 3)" in again.stderr.replace("\n", " ")
    rows = fs.finals(engine, "killed")
    assert [(r.trial, r.state, r.attempts) for r in rows] == [(0, fs.DONE, 3)]
    done = fs.get_final(engine, "killed", 0)
    assert decode(done.artifact).card["finished"] is True and done.owner != row.owner


@pytest.mark.parametrize(("key", "value", "message"), [
    ("finalize.epochs", "0", r"`finalize\.epochs` must be a whole number of epochs from 1 to 10000, but got 0"),
    ("finalize.warmup", "1.0", r"`finalize\.warmup` must be a share of the steps in \[0, 1\), but got 1\.0"),
    ("finalize.lr", "-1", r"`finalize\.lr` must be a positive number, but got -1"),
    ("finalize.bogus", "1", r"unknown key `finalize\.bogus`"),
    ("task.test", "1.5", r"`task\.test` must be a number in \(0, 1\), but got 1\.5"),
    ("training.augment", "'yes'", r"`training\.augment` must be true or false, but got 'yes'"),
])
def test_bad_finalize_and_split_settings_name_the_key(tiny_study, key: str, value: str, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        ss.load_spec(tiny_study(), overrides=[f"{key}={value}"])


def test_finalize_settings_may_change_between_runs_but_splits_may_not(tiny_study) -> None:
    base = ss.load_spec(tiny_study())
    assert ss.load_spec(tiny_study(), overrides=["finalize.epochs=30"]).comparable() == base.comparable()
    assert ss.load_spec(tiny_study(), overrides=["task.test=0.25"]).comparable() != base.comparable()
