"""Every study file shipped in ``studies/`` works: it validates, and it runs up to training.

Each file found in ``studies/`` (a new one is covered without touching this test) is read by the
project's own loader, its task options are checked by its task with the data folder empty, and
``squeeze run``'s checks before anything is written pass on small generated data in the file's
layout. The shipped data sets are not in the repository, so an example that names one is refused
for the missing files, in one sentence, and never for a key of the file.
"""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _data_folders import accept_generated_cifar, images, write_cifar10, write_cifar100, write_imagefolder
from conftest import REPO
from squeeze.objectives import load_task
from squeeze.search import load_spec
from squeeze.search._cli import main
from squeeze.spaces import SqueezeError

STUDY_FILES = sorted((REPO / "studies").glob("*.toml"))


def _write_idx(root: Path) -> Path:
    """MNIST's layout: gzipped IDX image and label files for a train and a t10k split."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, seed in (("train", 0), ("t10k", 1)):
        x, y = images(100, classes=10, size=28, channels=1, seed=seed)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">iIII", 2051, len(x), 28, 28) + x.astype(np.uint8).tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">iI", 2049, len(y)) + y.astype(np.uint8).tobytes())
    return root


WRITERS: dict[str, Callable[[Path], Path] | None] = {
    "digits": None,  # bundled with scikit-learn: no folder
    "mnist": _write_idx,
    "fashion_mnist": _write_idx,
    "cifar10": lambda root: write_cifar10(root, per_batch=20),
    "cifar100": lambda root: write_cifar100(root, n=400),
    "imagefolder": lambda root: write_imagefolder(root, per_class=4, classes=3),
}
"""A writer of small generated data in each task's layout, for the tasks the shipped studies use."""


def test_studies_are_found() -> None:
    assert len(STUDY_FILES) >= 7 and (REPO / "studies" / "efficientnet_b0_cifar100.toml") in STUDY_FILES


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_each_study_file_validates_without_its_data(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole file is accepted; with an empty data folder, the task refuses the folder, not an option."""
    monkeypatch.chdir(REPO)  # the examples name paths and modules from the repository root
    spec = load_spec(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        load_task(spec.task.dataset, options=spec.task.options, seed=spec.study.seed, holdout=spec.task.holdout,
                  data_dir=empty)
    except SqueezeError as exc:
        assert "`task.data`" in str(exc) and "task.options" not in str(exc), str(exc)


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_each_study_file_passes_the_checks_before_a_run_on_data_in_its_layout(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``squeeze run`` checks before writing anything: the data reads, the teacher builds and runs on it."""
    from squeeze.search import prepare

    monkeypatch.chdir(REPO)
    accept_generated_cifar(monkeypatch)
    dataset = load_spec(path).task.dataset
    if dataset not in WRITERS:
        pytest.fail(f"{path.name} uses task {dataset!r}: add a writer of its layout to WRITERS in this test.")
    writer = WRITERS[dataset]
    data = str(writer(tmp_path / "data")) if writer else None
    # A checkpoint named in a shipped file would have to ship too; none is named, so the teacher is built fresh.
    spec = load_spec(path, data=data)
    task = prepare(spec)
    assert len(task.x_train) > 0 and len(task.x_holdout) > 0


def test_the_cifar100_example_without_its_files_is_refused_for_the_files(
    tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``squeeze run studies/efficientnet_b0_cifar100.toml --data EMPTY``: one sentence, nothing written."""
    monkeypatch.chdir(tmp_path)  # the study's SQLite database would land in ./studies
    monkeypatch.delenv("SQUEEZE_STORAGE", raising=False)
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    code = main(["run", str(REPO / "studies" / "efficientnet_b0_cifar100.toml"), "--data", str(empty)])
    out, err = capfd.readouterr()
    assert code != 0 and not out.strip() and "Traceback" not in err, out + err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    sentence = err[len("error: "):].strip()
    assert sentence.endswith(".") and "task.options" not in sentence, sentence
    assert re.search(rf"`{re.escape(str(empty))}` \(`task\.data`\) is not in torchvision's layout: "
                     r"a folder `cifar-100-python` holding `train`, `test`, `meta`, the original CIFAR-100 files"
                     r".*; `train` is missing\.$", sentence), sentence
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY"] and not any(empty.iterdir())  # nothing written
