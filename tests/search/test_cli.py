"""The command line: exit codes of every command, `squeeze list`, and one tiny study end to end.

The end-to-end test is the acceptance path of a person at a terminal: `squeeze run`, Ctrl-C in the
middle (SIGINT to the real process), the same command again, then status, pareto, plot and
export, and Optuna's own CLI reading the study.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from squeeze.objectives import PRUNERS, QUANTIZERS, list_tasks, load_artifact
from squeeze.search import SAMPLERS
from squeeze.search._cli import main
from squeeze.spaces import list_families

BIN = Path(sys.executable).parent
COMMANDS = ["run", "worker", "status", "pareto", "plot", "export", "finalize", "dashboard", "studies", "list"]


def _cli(capfd, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_0(command: str | None, capfd) -> None:
    code, out, _ = _cli(capfd, *([command] if command else []), "--help")
    assert code == 0 and "Usage" in out


def test_list_names_every_registry(capfd) -> None:
    code, out, _ = _cli(capfd, "list")
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["tasks"].split(", ") == list_tasks()
    assert lines["families"].split(", ") == list_families()
    assert lines["pruners"].split(", ") == list(PRUNERS)
    assert lines["quantizers"].split(", ") == list(QUANTIZERS)
    assert lines["samplers"].split(", ") == list(SAMPLERS)


@pytest.mark.parametrize(("argv", "code"), [
    pytest.param([], 2, id="no-command"),
    pytest.param(["bogus"], 2, id="unknown-command"),
    pytest.param(["status"], 2, id="status-without-study"),
    pytest.param(["run", "x.toml", "--trials", "many"], 2, id="run-trials-not-a-number"),
    pytest.param(["run", "x.toml", "--workers", "0"], 2, id="run-workers-0"),
    pytest.param(["list", "--bogus"], 2, id="list-unknown-option"),
])
def test_usage_errors_exit_2(argv: list[str], code: int, capfd) -> None:
    assert _cli(capfd, *argv)[0] == code


@pytest.mark.parametrize("command", ["status", "pareto", "plot", "export", "dashboard", "studies"])
def test_commands_on_a_missing_database_exit_2(command: str, tmp_path: Path, capfd) -> None:
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    argv = {"studies": ["studies", "--storage", url],
            "export": ["export", "nosuch", "--storage", url, "--trial", "0", "-o", str(tmp_path / "x")],
            "plot": ["plot", "nosuch", "--storage", url, "-o", str(tmp_path / "plots")]}.get(command, [command, "nosuch", "--storage", url])
    code, out, err = _cli(capfd, *argv)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "missing.db").exists(), "a mistyped path must not create a database"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nor anything beside it"


def test_studies_on_a_database_without_studies_writes_nothing(tmp_path: Path, capfd) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id INTEGER)"))
    engine.dispose()
    before = path.read_bytes()
    code, out, err = _cli(capfd, "studies", "--storage", f"sqlite:///{path}")
    assert code == 0, err
    assert path.read_bytes() == before, "listing must not create Optuna's tables in someone else's database"


def _complete(url: str, name: str) -> dict[int, tuple[float, ...]]:
    # Read only once the worker has finished creating Optuna's schema (its version row is the last
    # thing written); opening Optuna's storage earlier would race the worker on that same row.
    engine = sa.create_engine(url)
    try:
        if "alembic_version" not in sa.inspect(engine).get_table_names():
            return {}
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 0:
                return {}
    finally:
        engine.dispose()
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return {}
    return {t.number: tuple(t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}


def test_tiny_study_end_to_end_with_ctrl_c(tiny_study, tmp_path: Path, capfd) -> None:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    budget = 10  # far more than can complete between one poll and the signal, so the run is always cut short
    path = tiny_study(name="e2e", storage=url, trials=budget)

    # 1. `squeeze run` in a real process; SIGINT once it has completed a trial (Ctrl-C in a terminal).
    log = (tmp_path / "run.err").open("w+")
    proc = subprocess.Popen([str(BIN / "squeeze"), "run", str(path)], stdout=subprocess.DEVNULL, stderr=log,
                            cwd=tmp_path)
    deadline = time.monotonic() + 240
    before: dict[int, tuple[float, ...]] = {}
    while not before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        before = _complete(url, "e2e")
    assert before and proc.poll() is None, "the run ended or stalled before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log.seek(0)
    err = log.read()
    assert "Traceback" not in err and "interrupted: " in err and "run the same command to resume" in err, err
    before = _complete(url, "e2e")
    assert 1 <= len(before) < budget

    # 2. The same command again: it resumes, keeps every completed trial and ends at exactly the budget.
    code, _, err = _cli(capfd, "run", str(path))
    assert code == 0 and "loading the stored teacher" in err and f"done: {budget}/{budget}" in err, err
    after = _complete(url, "e2e")
    assert len(after) == budget
    assert all(after[n] == values for n, values in before.items()), "earlier completed trials are kept as they were"

    # 3. Status, front, plots and export of the front, by study file and by name.
    code, out, _ = _cli(capfd, "status", str(path))
    assert code == 0 and "trials complete" in out and "budget (completed)" in out
    assert re.search(r"latency .*\d+ trials timed, \d+ took their network's earlier measurement", out), out
    assert [line for line in out.splitlines() if "trials complete" in line][0].split()[-2] == str(budget)
    sampler = [line for line in out.splitlines() if "sampler" in line]
    assert sampler and re.search(r"(random|auto|tpe|nsga2), \d+\.\d+ ms a trial \(\d+\.\d% of a", sampler[0]), out
    code, out, _ = _cli(capfd, "pareto", "e2e", "--storage", url)
    assert code == 0 and "Pareto front" in out
    code, out, _ = _cli(capfd, "pareto", str(path), "--all")
    assert code == 0 and all(f" {n} " in out for n in after)
    plots = tmp_path / "plots"
    code, out, _ = _cli(capfd, "plot", str(path), "-o", str(plots))
    assert code == 0 and {p.suffix for p in plots.iterdir()} == {".png", ".svg"}
    assert all(p.stat().st_size > 0 for p in plots.iterdir())
    front = tmp_path / "front"
    code, out, _ = _cli(capfd, "export", str(path), "--front", "-o", str(front))
    assert code == 0
    exported = sorted(front.glob("trial-*.squeeze"))
    assert exported and len(exported) == len(out.split())
    for artifact in exported:
        number = int(artifact.stem.split("-")[1])
        assert number in after and load_artifact(artifact).size_bytes == int(after[number][1])
    code, out, _ = _cli(capfd, "studies", "--storage", url)
    assert code == 0 and "e2e" in out

    # 4. Optuna's own command line reads the study.
    listed = subprocess.run([str(BIN / "optuna"), "studies", "--storage", url], capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0 and "e2e" in listed.stdout, listed.stderr


def test_status_shows_the_references_beaten_in_an_auto_study(tiny_study, capfd) -> None:
    path = tiny_study(name="opened", trials=8, references=True)
    path.write_text(path.read_text().replace('sampler = "random"', 'sampler = "auto"'))
    code, _, err = _cli(capfd, "run", str(path))
    assert code == 0, err
    study = optuna.load_study(study_name="opened", storage=f"sqlite:///{path.parent / 'studies.db'}")
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert sum(1 for t in finished if "reference" in t.user_attrs) == 4
    assert {t.user_attrs["sampler"] for t in finished} == {"auto"}
    code, out, _ = _cli(capfd, "status", str(path))
    assert code == 0
    assert re.search(r"references beaten\s+│?\s*[0-4] of 4", out), out
