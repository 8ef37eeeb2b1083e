"""Train anywhere, time on the target: workers of two CPU classes on one PostgreSQL study.

The workers are ``_cheap_worker.py --timed`` processes: each candidate's trial waits (RUNNING, with a
job in ``squeeze_timings``) until a worker whose ``$SQUEEZE_CPU_CLASS`` is the study's target times it.
The study names its target in the file (``latency.target``), so no test depends on this machine's CPU.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from optuna.trial import TrialState

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_workers import Worker, by_state, pg_study, trials_of  # noqa: E402, F401 - pg_study is a fixture

TARGET, FOREIGN = "target-cpu [avx512_vnni]", "foreign-cpu [avx2]"


def _timed_study(pg_study, *, trials: int) -> tuple[Path, str]:
    path, name = pg_study(trials=trials)
    text = path.read_text().replace("[latency]\n", f'[latency]\ntarget = "{TARGET}"\n', 1)
    path.write_text(text)
    return path, name


def _jobs(url: str, name: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT trial, state, attempts FROM squeeze_timings WHERE study = :n ORDER BY trial"),
                                {"n": name}).mappings().all()
        return [dict(r) for r in rows]
    finally:
        engine.dispose()


def _wait_for(worker: Worker, key: str, *, timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [line[key] for line in worker.lines if key in line]
        if found:
            return found[0]
        assert worker.proc.is_alive(), f"worker exited early: {worker.text}"
        time.sleep(0.02)
    raise AssertionError(f"no {key!r} line within {timeout} s: {worker.text}")


def test_a_foreign_worker_trains_and_the_target_worker_times_everything(pg_url: str, pg_study) -> None:
    path, name = _timed_study(pg_study, trials=6)
    # The foreign worker trains slowly enough that the target worker, starting after it, trains some too
    # even on a loaded machine (it has taken all six while the other imported torch).
    foreign = Worker(path, worker=1, sleep=1.0, args=("--create", "--timed", "--cpu-class", FOREIGN))
    foreign.wait_for_start(after=1)
    target = Worker(path, worker=2, sleep=0.3, args=("--timed", "--cpu-class", TARGET))
    assert target.finish() == 0, target.text
    assert foreign.finish() == 0, foreign.text

    trials = trials_of(pg_url, name)
    counts = by_state(trials)
    assert counts["COMPLETE"] == 6, counts  # the exact budget
    assert counts["RUNNING"] == counts["WAITING"] == 0, counts  # nothing left waiting
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["latency"]["cpu_class"] == TARGET for t in complete)
    assert all(t.values[2] == t.user_attrs["formula_ratio"] for t in complete)
    trained = {t.user_attrs["trained_on"] for t in complete}
    assert trained == {FOREIGN, TARGET}, trained  # both trained; only one timed
    assert {j["state"] for j in _jobs(pg_url, name)} == {"done"}
    foreign_report = foreign.lines[-1]
    assert foreign_report["completed"] == 0 and foreign_report["failed"] == 0, foreign_report

    import squeeze.search as ss

    status = ss.status(name, storage=pg_url)
    assert status.latency_target and status.latency_target.startswith(TARGET)
    assert status.waiting_timing == 0 and status.timed_elsewhere == 0


def test_a_killed_timing_worker_leaves_its_candidates_to_the_next(pg_url: str, pg_study) -> None:
    path, name = _timed_study(pg_study, trials=4)
    foreign = Worker(path, worker=1, sleep=0.05, args=("--create", "--timed", "--cpu-class", FOREIGN))
    assert foreign.finish() == 0, foreign.text
    report = foreign.lines[-1]
    assert report["waiting_timing"] == 4 and report["budget_completed"] == 0, report  # it stops, saying so
    assert by_state(trials_of(pg_url, name))["RUNNING"] == 4

    doomed = Worker(path, worker=2, args=("--timing-only", "--time-sleep", "30", "--cpu-class", TARGET))
    first = _wait_for(doomed, "timing")
    doomed.kill(signal.SIGKILL)
    doomed.finish()
    held = [j for j in _jobs(pg_url, name) if j["trial"] == first]
    assert held and held[0]["state"] == "timing", held  # claimed by the dead worker

    heir = Worker(path, worker=3, args=("--timing-only", "--cpu-class", TARGET))
    assert heir.finish() == 0, heir.text
    trials = trials_of(pg_url, name)
    counts = by_state(trials)
    assert counts["COMPLETE"] == 4 and counts["RUNNING"] == 0 and counts["FAIL"] == 0, counts
    assert all(t.user_attrs["latency"]["cpu_class"] == TARGET for t in trials)
    jobs = {j["trial"]: j for j in _jobs(pg_url, name)}
    assert all(j["state"] == "done" for j in jobs.values()), jobs
    assert jobs[first]["attempts"] == 2  # taken over once its claim went silent


def test_a_timing_only_worker_off_the_target_is_refused(pg_url: str, pg_study, monkeypatch, capsys) -> None:
    from squeeze.search._cli import main

    path, name = _timed_study(pg_study, trials=2)
    created = Worker(path, worker=1, sleep=0.05, args=("--create", "--timed", "--cpu-class", FOREIGN))
    assert created.finish() == 0, created.text
    before = by_state(trials_of(pg_url, name))
    monkeypatch.setenv("SQUEEZE_CPU_CLASS", FOREIGN)
    assert main(["worker", str(path), "--timing-only"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"study {name!r} is timed on {TARGET!r}" in said, said
    assert by_state(trials_of(pg_url, name)) == before


def test_a_real_candidate_trained_off_the_target_is_timed_on_it(tiny_study, tmp_path: Path, monkeypatch) -> None:
    # One process, SQLite, real networks: trained under a foreign class, then timed under the target.
    import optuna

    import squeeze.search as ss
    from squeeze.objectives import CPU_CLASS_ENV, load_artifact

    path = tiny_study(name="timed", trials=2)
    path.write_text(path.read_text().replace("[latency]\n", f'[latency]\ntarget = "{TARGET}"\n', 1))
    monkeypatch.setenv(CPU_CLASS_ENV, FOREIGN)
    report = ss.run(path)
    assert report.budget_completed == 0 and report.waiting_timing == 2, report
    status = ss.status(path)
    assert status.counts["RUNNING"] == 2 and status.waiting_timing == 2

    monkeypatch.setenv(CPU_CLASS_ENV, TARGET)
    report = ss.work(path)
    assert report.budget_completed == 2 and report.waiting_timing == 0, report
    study = optuna.load_study(study_name="timed", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["latency_baseline"]["cpu_class"] == TARGET
    for t in trials:
        lat = t.user_attrs["latency"]
        assert lat["cpu_class"] == TARGET and lat["protocol"] == "equal-rounds/2", lat
        out = ss.export(path, trial=t.number, out=tmp_path / f"trial-{t.number}.squeeze")
        blob = out.read_bytes()
        # The stored bytes carry the latency measured on the target, and the size objective counts them.
        assert len(blob) == t.values[1] == t.user_attrs["size_bytes"]
        assert load_artifact(out).card["latency_ratio"] == t.values[2] == lat["ratio"]
    assert ss.status(path).waiting_timing == 0
