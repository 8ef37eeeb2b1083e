"""`squeeze dashboard`: a finished tiny study as Optuna's tools read it, and as a person sees it in a real browser.

The browser test starts the real command, opens the study's page in headless Chromium (Debian's
``chromium``, driven by Playwright), and checks what a person would: the objectives by name, the
Pareto-front plot, the hypervolume figure, and that a trial's download is the file `squeeze export`
writes. Without Chromium it skips; ``.ci/run`` installs Chromium and sets ``SQUEEZE_REQUIRE_BROWSER=1``,
which turns that skip into a failure. Set ``SQUEEZE_DASHBOARD_SCREENSHOT=FILE`` to keep a screenshot
of the study page (the README's ``docs/dashboard.png`` is one).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

import squeeze.search as ss
from squeeze.search import TrialAttr
from squeeze.search._cli import main

from conftest import TINY_STUDY, skip_unless_present

BIN = Path(sys.executable).parent
NAMES = ["accuracy", "size_bytes", "latency_ratio"]
CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER_ENV = "SQUEEZE_REQUIRE_BROWSER"
# What this machine's closed network needs: no background connections, no first-run work, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _study_file(folder: Path, name: str, url: str, trials: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_STUDY.format(name=name, storage=url, trials=trials, references="false"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 3-trial digits study in SQLite (snapshots after 2 and 3 trials); its file and URL."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'studies.db'}"
    path = _study_file(folder, "tiny", url, trials=3)
    ss.run(path)
    return path, url


class Served:
    """`squeeze dashboard` in a real process, its printed URL, and its output read as it comes."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([str(BIN / "squeeze"), "dashboard", *argv, "--port", "0"], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.printed: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 120  # the first import of torch is slow on a busy 2-core machine
        self.url = ""
        while not self.url and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.printed.append(line)
            found = re.search(r"http://\S+", line)
            self.url = found.group(0) if found else ""
        assert self.url, f"no URL printed: {self.printed} {self.proc.stderr.read() if self.proc.poll() is not None else ''}"

    @property
    def root(self) -> str:
        return self.url.split("/dashboard/")[0]

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and everything printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        rest = self.proc.stdout.read() if self.proc.stdout and not self.proc.stdout.closed else ""
        return code, "".join(self.printed) + rest + self.proc.stderr.read()


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=30)


def test_a_squeeze_study_reads_well_in_optuna(finished: tuple[Path, str], tmp_path: Path) -> None:
    path, url = finished
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.metric_names == NAMES

    from squeeze.search._artifact_store import artifact_store

    store = artifact_store(url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        metas = get_all_artifact_meta(trial, storage=storage)
        assert [m.filename for m in metas] == [f"trial-{trial.number}.squeeze"]
        download_artifact(artifact_store=store, artifact_id=metas[0].artifact_id, file_path=str(tmp_path / "got"))
        got = (tmp_path / "got").read_bytes()
        assert hashlib.sha256(got).hexdigest() == trial.user_attrs[TrialAttr.ARTIFACT_SHA256]
        (tmp_path / "got").unlink()

    from optuna_dashboard import get_note

    note = get_note(study)
    teacher = ss.front(path).teacher
    assert "`digits`" in note and f"accuracy {teacher.accuracy:.4f}" in note and "squeeze export tiny" in note, note


def test_the_study_in_a_real_browser(finished: tuple[Path, str], served: list[Served], tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        skip_unless_present(f"there is no Chromium at {CHROMIUM} (Debian's `chromium` package)",
                            required_by=REQUIRE_BROWSER_ENV)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_unless_present("Playwright is not installed (the `test` extra installs it)", required_by=REQUIRE_BROWSER_ENV)
    path, url = finished
    numbers = {t.number: t for t in optuna.load_study(study_name="tiny", storage=url).get_trials()}
    served.append(Served([str(path)]))
    dashboard = served[0]
    assert dashboard.url.startswith("http://127.0.0.1:"), "loopback unless --host says otherwise"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.goto(dashboard.url)

            # The Pareto view: its plot holds a marker for every completed trial, and its axes are named.
            pareto = page.locator(".MuiCard-root", has_text="Pareto Front")
            pareto.locator(".js-plotly-plot .scatterlayer .point").first.wait_for(timeout=60_000)
            assert pareto.locator(".js-plotly-plot .scatterlayer .point").count() >= len(numbers)
            assert "accuracy" in pareto.inner_text() and "size_bytes" in pareto.inner_text()
            pareto.get_by_text("size_bytes").click()  # the Y axis's choices: every objective, by name
            offered = page.get_by_role("option").all_inner_texts()
            assert offered == NAMES, offered
            page.keyboard.press("Escape")
            body = page.inner_text("body")
            assert "Objective 0" not in body and "Hypervolume of the feasible front" in body
            if os.environ.get("SQUEEZE_DASHBOARD_SCREENSHOT"):
                page.wait_for_timeout(1500)  # plotly's transitions
                page.screenshot(path=os.environ["SQUEEZE_DASHBOARD_SCREENSHOT"], clip={
                    "x": 0, "y": 0, "width": 1400, "height": 880})

            # The study's note: the task and the teacher's figures.
            page.goto(f"{dashboard.url}/note")
            page.get_by_text("Teacher").first.wait_for(timeout=60_000)
            assert "digits" in page.inner_text("body")

            # A trial's page offers its artifact; the download is the file `squeeze export` writes.
            number = max(numbers)
            page.goto(f"{dashboard.url}/trials")
            page.get_by_text(f"Trial {number}", exact=True).click()
            link = page.locator(f'a[aria-label="download artifact"][download="trial-{number}.squeeze"]')
            with page.expect_download(timeout=60_000) as caught:
                link.click()
            downloaded = Path(caught.value.path()).read_bytes()
        finally:
            browser.close()
    exported = tmp_path / "exported.squeeze"
    assert main(["export", str(path), "--trial", str(number), "-o", str(exported)]) == 0
    assert downloaded == exported.read_bytes()
    assert hashlib.sha256(downloaded).hexdigest() == numbers[number].user_attrs[TrialAttr.ARTIFACT_SHA256]

    code, printed = dashboard.stop()
    assert code == 0 and "dashboard stopped." in printed and "Traceback" not in printed, printed


def test_on_postgresql_artifacts_are_served_from_the_database_and_no_password_is_printed(
        pg_url: str, served: list[Served], tmp_path: Path) -> None:
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    url = sa.engine.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    name = f"dash-{uuid.uuid4().hex[:6]}"
    ss.run(ss.load_spec(_study_file(tmp_path, name, "sqlite:///unused.db", trials=1), storage=url))

    env = dict(os.environ, SQUEEZE_STORAGE=url)  # the URL from the environment, as a careful user passes it
    served.append(Served([name], env=env))
    with urllib.request.urlopen(f"{served[0].root}/api/studies/{served[0].url.rsplit('/', 1)[1]}", timeout=60) as r:
        data = json.load(r)
    assert data["objective_names"] == NAMES
    (trial,) = [t for t in data["trials"] if t["state"] == "Complete"]
    (artifact,) = trial["artifacts"]
    link = f"{served[0].root}/artifacts/{trial['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
    with urllib.request.urlopen(link, timeout=60) as r:
        blob = r.read()
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert hashlib.sha256(blob).hexdigest() == attrs[TrialAttr.ARTIFACT_SHA256]
    code, printed = served[0].stop()
    assert code == 0 and secret not in printed, printed


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                               ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                               ("192.168.1.5", False), ("example.org", False)])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    from squeeze.search._dashboard import is_loopback

    assert is_loopback(host) is loopback


def test_bad_input_is_one_sentence_and_exit_2(finished: tuple[Path, str], tmp_path: Path, monkeypatch, capfd) -> None:
    path, url = finished
    assert main(["dashboard", "nothing-here", "--storage", url]) == 2
    _, err = capfd.readouterr()
    assert err.startswith("error: study 'nothing-here' does not exist") and err.count("\n") == 1, err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(path), "--port", str(port)]) == 2
    _, err = capfd.readouterr()
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err, err

    # An address of no interface here (TEST-NET-1): nothing is sent, the bind is refused.
    assert main(["dashboard", str(path), "--host", "192.0.2.1", "--port", "0"]) == 2
    _, err = capfd.readouterr()
    assert "`--host` must be an address of this machine, but got '192.0.2.1'" in err and err.count("\n") == 1, err

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if the extra were not installed
    assert main(["dashboard", str(path)]) == 2
    _, err = capfd.readouterr()
    assert "pip install 'squeeze-search[dashboard]'" in err and "Traceback" not in err, err
