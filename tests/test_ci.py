"""CI cannot pass by skipping: without MNIST or PostgreSQL, CI stops, and the tests that need them fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MNIST_FILES, REPO, find_mnist


def test_ci_refuses_to_start_without_the_mnist_folder(tmp_path: Path) -> None:
    # A copy of the script in a repository with nothing beside it: it must stop before it installs anything.
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    shown = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert shown.returncode != 0
    assert shown.stdout == ""
    lines = shown.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), shown.stderr
    assert "../shared/data/mnist" in lines[0] and str(tmp_path / "shared" / "data" / "mnist") in lines[0]
    assert sorted(p.name for p in repo.iterdir()) == [".ci"], "nothing should be installed"


@pytest.mark.parametrize(("present", "why"), [
    (None, "there is no MNIST folder at"),
    ((), "the MNIST folder .* lacks t10k-images"),
    (MNIST_FILES[:1], "the MNIST folder .* lacks t10k-labels"),
], ids=["no-folder", "empty-folder", "images-without-labels"])
def test_missing_mnist_files_skip_and_fail_under_the_ci_flag(present: tuple[str, ...] | None, why: str,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mnist"
    if present is not None:
        folder.mkdir()
        for name in present:
            (folder / name).write_bytes(b"")
    monkeypatch.delenv("SQUEEZE_REQUIRE_MNIST", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"^{why}"):
        find_mnist(folder)
    monkeypatch.setenv("SQUEEZE_REQUIRE_MNIST", "1")
    with pytest.raises(pytest.fail.Exception, match=f"^SQUEEZE_REQUIRE_MNIST=1 but {why}"):
        find_mnist(folder)
    folder.mkdir(exist_ok=True)
    for name in MNIST_FILES:
        (folder / name).write_bytes(b"")
    assert find_mnist(folder) == folder


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by their file name (tests/ has no packages): two files of one name stop collection."""
    tests = Path(__file__).resolve().parent
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not clashes, f"test files share a name, which stops pytest's collection: {clashes}"
