"""Workers on PostgreSQL: speed-up with 1-8 workers, and the storage's own cost per trial.

1. **Speed-up.** K worker processes (``tests/search/_cheap_worker.py``: 30 suggested parameters,
   a 0.2 s sleep, a formula) share one study of ``--per-worker`` x K trials with the random
   sampler. Throughput is completed trials over the span from the first trial's start to the last
   one's end, read from the database; workers line up (imported and connected) before the first trial
   starts, so process start-up (importing torch) is not counted.
   Target: at least 0.8 x linear at 8 workers.
2. **Storage overhead.** One worker in this process runs 1,000 trials of the same objective with
   no sleep through the real loop (:func:`run_worker`: the budget lock, heartbeats, stale-trial
   sweeps, snapshots of the front every ``snapshot_every`` trials). Its time per trial, minus the
   time per trial of a plain ask/tell loop on Optuna's in-memory storage (the floor: the same
   sampling and formula, no database), is the storage's overhead; reported over trials 51-100 and
   951-1,000. Plain Optuna on the same PostgreSQL (no batching, no lock) is shown for scale, over
   ``--plain`` trials. Target: at most 50 ms per trial at 1,000 trials.

    python benchmarks/workers.py [--storage postgresql+psycopg://root@127.0.0.1:5432/test]

The URL (else ``$SQUEEZE_TEST_POSTGRES``) names a server; a fresh database is created for the run
and dropped afterwards. ``--markdown FILE`` also writes the tables as Markdown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "search"))

from _cheap_worker import cheap_objective  # noqa: E402

STUDY = """
[study]
name = "{name}"
storage = "{storage}"
trials = {trials}
sampler = "random"
seed = 0
snapshot_every = 5
references = false

[task]
dataset = "digits"
family = "cnn"

[task.model]
widths = [8, 16]
depths = [1, 1]
"""
DIRECTIONS = ["maximize", "minimize", "minimize"]


def fresh_database(server: str) -> tuple[str, sa.Engine, str]:
    name = f"squeeze_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    return url, admin, name


def drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                             "AND pid <> pg_backend_pid()"), {"n": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def write_study(folder: Path, name: str, url: str, trials: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(name=name, storage=url, trials=trials), encoding="utf-8")
    return path


def scaling(url: str, folder: Path, workers: int, *, per_worker: int, sleep_s: float) -> dict[str, float]:
    from squeeze.search import create, load_spec

    name = f"scale{workers}"
    budget = per_worker * workers
    path = write_study(folder, name, url, budget)
    create(load_spec(path))
    go = folder / f"{name}.go"
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "search" / "_cheap_worker.py"), str(path),
                               "--worker", str(i), "--sleep", str(sleep_s), "--go", str(go)], stdout=subprocess.DEVNULL)
             for i in range(workers)]
    # Every worker has imported torch and connected before any trial starts: start-up is not timed.
    while len(list(folder.glob(f"{go.name}.ready-*"))) < workers:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    go.touch()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed: exit codes {codes}")
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(done) == budget, (len(done), budget)
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"workers": workers, "trials": budget, "span_s": span, "trials_per_s": budget / span}


def overhead_ours(url: str, folder: Path, trials: int) -> list[float]:
    from squeeze.search import Teacher, load_spec, work_on

    spec = load_spec(write_study(folder, "overhead", url, trials))
    marks = [time.perf_counter()]
    # A teacher makes the loop snapshot the front and its hypervolume, as a real study does.
    teacher = Teacher(accuracy=1.0, size_bytes=4000, latency_ms=1.0)
    work_on(spec, cheap_objective(sleep_s=0.0), create=True, handle_signals=False, teacher=teacher,
               on_trial=lambda counts, frozen: marks.append(time.perf_counter()))
    return marks


def overhead_plain(storage: optuna.storages.BaseStorage | str, trials: int) -> list[float]:
    objective = cheap_objective(sleep_s=0.0)
    study = optuna.create_study(storage=storage, directions=DIRECTIONS, study_name=f"plain-{uuid.uuid4().hex[:6]}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    marks = [time.perf_counter()]
    for _ in range(trials):
        trial = study.ask()
        values, attrs = objective(trial)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, list(values))
        marks.append(time.perf_counter())
    return marks


def per_trial_ms(marks: list[float], first: int, last: int) -> float:
    """Mean milliseconds per trial over trials ``first``..``last`` (1-based, inclusive)."""
    return (marks[last] - marks[first - 1]) / (last - first + 1) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("SQUEEZE_TEST_POSTGRES"),
                        help="PostgreSQL server URL (default: $SQUEEZE_TEST_POSTGRES)")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--per-worker", type=int, default=40, help="trials per worker in the speed-up runs")
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--trials", type=int, default=1000, help="trials of the overhead run")
    parser.add_argument("--plain", type=int, default=100, help="trials of plain Optuna on PostgreSQL")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    if not args.storage:
        parser.error("give --storage postgresql+psycopg://... or set SQUEEZE_TEST_POSTGRES")
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    url, admin, dbname = fresh_database(args.storage)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            say(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; "
                f"PostgreSQL {sa.create_engine(url).connect().execute(sa.text('SHOW server_version')).scalar()}")
            say()
            say("| workers | trials | span (s) | trials/s | speed-up | of linear |")
            say("|---:|---:|---:|---:|---:|---:|")
            base = None
            for k in [int(x) for x in args.workers.split(",")]:
                r = scaling(url, folder, k, per_worker=args.per_worker, sleep_s=args.sleep)
                base = base or r["trials_per_s"] / k
                speedup = r["trials_per_s"] / base
                say(f"| {k} | {r['trials']} | {r['span_s']:.1f} | {r['trials_per_s']:.2f} | {speedup:.2f} | "
                    f"{speedup / k:.0%} |")
            say()
            floor = overhead_plain(optuna.storages.InMemoryStorage(), args.trials)
            ours = overhead_ours(url, folder, args.trials)
            plain = overhead_plain(url, args.plain) if args.plain else None
            say("| per trial (ms) | trials 51-100 | trials 951-1000 |")
            say("|---|---:|---:|")
            late = (args.trials - 49, args.trials)
            f100, f1000 = per_trial_ms(floor, 51, 100), per_trial_ms(floor, *late)
            o100, o1000 = per_trial_ms(ours, 51, 100), per_trial_ms(ours, *late)
            say(f"| Optuna in-memory storage (the floor) | {f100:.1f} | {f1000:.1f} |")
            say(f"| squeeze worker loop on PostgreSQL | {o100:.1f} | {o1000:.1f} |")
            say(f"| **storage overhead** (difference) | **{o100 - f100:.1f}** | **{o1000 - f1000:.1f}** |")
            if plain is not None:
                say(f"| plain Optuna ask/tell on PostgreSQL (for scale) | {per_trial_ms(plain, 51, args.plain):.1f} | - |")
            say()
            say(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        drop_database(admin, dbname)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
