"""Tasks: the registry, digits, the IDX reader on small written files, and the real MNIST folder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from squeeze.objectives import TaskData, list_tasks, load_task, register_task, unregister_task
from squeeze.spaces import SqueezeError

def _write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0) -> Path:
    """Write ``array`` (uint8) as IDX; ``magic`` overrides the header, ``cut`` drops trailing bytes."""
    if magic is None:
        magic = 0x0800 + array.ndim
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut]
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _write_pair(folder: Path, prefix: str, n: int, *, gz: bool, seed: int = 0, size: int = 6) -> None:
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    labels = np.arange(n) % 10  # every class present, balanced
    images = rng.integers(0, 256, size=(n, size, size))
    _write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def _load(name: str = "mnist", *, options: dict | None = None, seed: int = 0, holdout: float = 0.25, data_dir=None) -> TaskData:
    return load_task(name, options=options or {}, seed=seed, holdout=holdout, data_dir=data_dir)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


# --- every registered task ----------------------------------------------------------------------


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    _write_pair(tmp_path, "t10k", 80, gz=True)
    return tmp_path


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_loads_with_the_documented_invariants(name: str, idx_folder: Path, monkeypatch) -> None:
    from _data_folders import accept_generated_cifar, write_cifar10, write_cifar100, write_imagefolder

    # One folder in every layout: each task reads its own part of it.
    accept_generated_cifar(monkeypatch)
    write_cifar10(idx_folder)
    write_cifar100(idx_folder)
    write_imagefolder(idx_folder)
    data = _load(name, data_dir=idx_folder)
    assert data.name == name
    for x, y in ((data.x_train, data.y_train), (data.x_holdout, data.y_holdout)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (data.in_channels, *data.input_size)
        assert len(x) == len(y) > 0
        assert 0 <= int(y.min()) and int(y.max()) < data.num_classes
    # Normalised on the training part: zero mean and unit spread there, per channel.
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (data.x_train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    assert "x_train" not in repr(data)  # the repr stays one short line


def test_list_and_register() -> None:
    assert {"digits", "mnist", "fashion_mnist"} <= set(list_tasks())
    assert list_tasks() == sorted(list_tasks())

    @register_task("_test_tiny")
    def _tiny(options, *, seed, holdout, data_dir):
        x = torch.zeros(4, 1, 2, 2)
        y = torch.tensor([0, 1, 0, 1])
        return TaskData("_test_tiny", x, y, x, y, in_channels=1, num_classes=2, input_size=(2, 2))

    try:
        assert "_test_tiny" in list_tasks()
        assert _load("_test_tiny").num_classes == 2
    finally:
        unregister_task("_test_tiny")
    assert "_test_tiny" not in list_tasks()


def test_unknown_task_names_the_key_and_the_choices() -> None:
    with pytest.raises(SqueezeError, match=r"`task\.dataset` must be one of \[.*'digits'.*\], but got 'cifar'"):
        _load("cifar")


@pytest.mark.parametrize("holdout", [0, 1, 1.5, -0.1, True, "0.2", float("nan")])
def test_holdout_outside_the_open_unit_interval_is_refused(holdout) -> None:
    with pytest.raises(SqueezeError, match=r"`task\.holdout`"):
        _load("digits", holdout=holdout)


def test_holdout_too_small_for_one_sample_per_class() -> None:
    with pytest.raises(SqueezeError, match=r"`task\.holdout` must leave at least 10 samples"):
        _load("digits", holdout=0.001)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed(seed) -> None:
    with pytest.raises(SqueezeError, match=r"`seed`"):
        _load("digits", seed=seed)


def test_unknown_option_names_the_key_and_the_allowed_ones(idx_folder: Path) -> None:
    with pytest.raises(SqueezeError, match=r"`task\.options\.limit` is not an option of task 'digits'; it takes no options"):
        _load("digits", options={"limit": 5})
    with pytest.raises(SqueezeError, match=r"`task\.options\.lmit` .* the allowed keys are \['holdout_limit', 'input_size', 'limit', 'mean', 'std'\]"):
        _load("mnist", options={"lmit": 5}, data_dir=idx_folder)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_limit_must_be_a_positive_integer(value, idx_folder: Path) -> None:
    with pytest.raises(SqueezeError, match=r"`task\.options\.limit` must be a positive integer"):
        _load("mnist", options={"limit": value}, data_dir=idx_folder)


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_and_split() -> None:
    data = _load("digits", holdout=0.2)
    assert data.input_size == (8, 8) and data.in_channels == 1 and data.num_classes == 10
    assert len(data.x_train) + len(data.x_holdout) == 1797
    assert len(data.x_holdout) == 360  # ceil(0.2 * 1797)
    # Stratified: every class is on both sides, in about the same proportion.
    train_share = torch.bincount(data.y_train, minlength=10) / len(data.y_train)
    held_share = torch.bincount(data.y_holdout, minlength=10) / len(data.y_holdout)
    assert (train_share - held_share).abs().max() < 0.01


def test_digits_is_deterministic_in_the_seed() -> None:
    a, b, c = _load("digits", seed=7), _load("digits", seed=7), _load("digits", seed=8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_holdout, b.y_holdout)
    assert not torch.equal(a.y_holdout, c.y_holdout)


def test_digits_train_and_holdout_do_not_overlap() -> None:
    from collections import Counter

    from sklearn.datasets import load_digits

    data = _load("digits", seed=3, holdout=0.3)
    # Undo the normalisation: raw pixels are 0..16 and both ends occur in the training part.
    lo, hi = data.x_train.min(), data.x_train.max()

    def raw(x: torch.Tensor) -> list[bytes]:
        levels = torch.round(16 * (x - lo) / (hi - lo)).to(torch.uint8)
        return [row.numpy().tobytes() for row in levels.reshape(len(x), -1)]

    images = load_digits().images.astype(np.uint8).reshape(1797, -1)
    # Each image lands on exactly one side: the two parts add up to the data set, no more, no less.
    assert Counter(raw(data.x_train)) + Counter(raw(data.x_holdout)) == Counter(r.tobytes() for r in images)


def test_normalisation_uses_the_training_part_only(tmp_path: Path) -> None:
    # Dark training images, bright held-out ones: statistics of both would centre neither.
    labels = np.arange(40) % 10
    dark = np.random.default_rng(0).integers(0, 100, size=(40, 6, 6))
    bright = np.random.default_rng(1).integers(150, 256, size=(40, 6, 6))
    for prefix, images in (("train", dark), ("t10k", bright)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    data = _load("mnist", data_dir=tmp_path)
    train = torch.from_numpy(dark.astype(np.float32) / 255)
    held = torch.from_numpy(bright.astype(np.float32) / 255)
    expected = (held - train.mean()) / train.std()
    assert torch.allclose(data.x_holdout[:, 0], expected, atol=1e-5)
    assert data.x_holdout.mean() > 2


# --- IDX reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_both_pairs_train_on_train_and_hold_out_t10k(tmp_path: Path, gz: bool) -> None:
    _write_pair(tmp_path, "train", 60, gz=gz, seed=1)
    _write_pair(tmp_path, "t10k", 30, gz=gz, seed=2)
    data = _load("mnist", data_dir=tmp_path, holdout=0.9)  # holdout unused with both pairs
    assert data.x_train.shape == (60, 1, 6, 6) and data.x_holdout.shape == (30, 1, 6, 6)
    assert data.input_size == (6, 6)
    # The pixels survive parsing: undoing the normalisation gives back the written bytes.
    written = np.random.default_rng(1).integers(0, 256, size=(60, 6, 6)).astype(np.uint8)
    x = torch.from_numpy(written.astype(np.float32) / 255)
    restored = data.x_train[:, 0] * x.std() + x.mean()
    assert torch.allclose(restored, x, atol=1e-5)
    assert torch.equal(data.y_train, torch.arange(60) % 10)


def test_one_pair_is_split_seeded_and_stratified(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 100, gz=False)
    a = _load("mnist", data_dir=tmp_path, holdout=0.2, seed=5)
    b = _load("mnist", data_dir=tmp_path, holdout=0.2, seed=5)
    assert len(a.x_train) == 80 and len(a.x_holdout) == 20
    assert torch.equal(torch.bincount(a.y_holdout), torch.full((10,), 2))
    assert torch.equal(a.x_holdout, b.x_holdout)
    assert not _rows(a.x_train) & _rows(a.x_holdout)  # random 6x6 images are all distinct


def test_a_train_pair_alone_is_split_too(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", 40, gz=True)
    data = _load("fashion_mnist", data_dir=tmp_path, holdout=0.25)
    assert len(data.x_train) == 30 and len(data.x_holdout) == 10


def test_plain_file_is_preferred_over_its_gz_copy(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 40, gz=False)
    # A broken .gz next to the extracted file, as a half-finished copy might leave, is not read.
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    assert len(_load("mnist", data_dir=tmp_path).x_train) == 30


def test_limits_subsample_each_part_seeded(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", 200, gz=False)
    _write_pair(tmp_path, "t10k", 100, gz=False, seed=1)
    a = _load("mnist", data_dir=tmp_path, options={"limit": 50, "holdout_limit": 20}, seed=4)
    b = _load("mnist", data_dir=tmp_path, options={"limit": 50, "holdout_limit": 20}, seed=4)
    assert len(a.x_train) == 50 and len(a.x_holdout) == 20
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(torch.bincount(a.y_train), torch.full((10,), 5))  # stratified
    # A limit above the size keeps everything; a tiny one still works without stratifying.
    assert len(_load("mnist", data_dir=tmp_path, options={"limit": 10_000}).x_train) == 200
    assert len(_load("mnist", data_dir=tmp_path, options={"limit": 3}).x_train) == 3


def test_wrong_magic_names_the_file_and_both_numbers(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=True)
    bad = _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((20, 6, 6)), magic=1234)
    with pytest.raises(SqueezeError) as err:
        _load("mnist", data_dir=tmp_path)
    assert str(err.value) == f"`{bad}` is not an IDX image file: magic number 1234, expected 2051."


def test_labels_swapped_for_images_is_a_wrong_magic(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((20, 6, 6)))
    with pytest.raises(SqueezeError, match=r"labels-idx1-ubyte` is not an IDX label file: magic number 2051, expected 2049"):
        _load("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_body(tmp_path: Path, gz: bool) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=gz)
    ext = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", np.zeros((20, 6, 6)), cut=7)
    with pytest.raises(SqueezeError, match=r"t10k-images-idx3-ubyte.*promises 720 bytes of data, but 713 follow"):
        _load("mnist", data_dir=tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=False)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 6, 6)), cut=720 + 6)
    with pytest.raises(SqueezeError, match=r"is truncated: it has 10 bytes, expected a header of 16"):
        _load("mnist", data_dir=tmp_path)


def test_cut_off_gzip_stream(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(SqueezeError, match=r"t10k-labels-idx1-ubyte\.gz` could not be read as a gzip file"):
        _load("mnist", data_dir=tmp_path)


def test_mismatched_counts(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(19) % 10)
    with pytest.raises(SqueezeError, match=r"holds 19 labels for 20 images"):
        _load("mnist", data_dir=tmp_path)


def test_labels_out_of_range(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 20, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 12))
    with pytest.raises(SqueezeError, match=r"must hold class labels 0 to 9, but holds 12"):
        _load("mnist", data_dir=tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SqueezeError, match=rf"`task\.data` must be a folder.*`{missing}` is not a folder"):
        _load("mnist", data_dir=missing)


def test_no_data_dir_names_task_data() -> None:
    with pytest.raises(SqueezeError, match=r"`task\.data` must name a folder of IDX files"):
        _load("fashion_mnist", data_dir=None)


def test_folder_without_a_pair(tmp_path: Path) -> None:
    # Half a pair is not a pair.
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 6, 6)))
    with pytest.raises(SqueezeError, match=r"holds no IDX pair: expected `train-images-idx3-ubyte`"):
        _load("mnist", data_dir=tmp_path)


# --- the real MNIST test set -------------------------------------------------------------------


def test_real_mnist_t10k_folder(mnist_dir: Path) -> None:
    data = _load("mnist", data_dir=mnist_dir, holdout=0.2, seed=0)
    assert data.x_train.shape == (8000, 1, 28, 28) and data.x_holdout.shape == (2000, 1, 28, 28)
    counts = torch.bincount(torch.cat([data.y_train, data.y_holdout]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the published ones
    assert data.x_train.mean().abs() < 1e-4 and (data.x_train.std() - 1).abs() < 1e-4
    small = _load("mnist", data_dir=mnist_dir, options={"limit": 500, "holdout_limit": 100}, seed=0)
    assert len(small.x_train) == 500 and len(small.x_holdout) == 100
    assert set(small.y_train.tolist()) == set(range(10))
