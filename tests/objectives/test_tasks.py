"""Tasks: the registry, the three splits, digits, the IDX reader on small written files, and the real MNIST folder."""

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


def _load(name: str = "mnist", *, options: dict | None = None, seed: int = 0, holdout: float = 0.25, test: float = 0.2,
          data_dir=None) -> TaskData:
    return load_task(name, options=options or {}, seed=seed, holdout=holdout, test=test, data_dir=data_dir)


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
    for x, y in ((data.x_train, data.y_train), (data.x_holdout, data.y_holdout), (data.x_test, data.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (data.in_channels, *data.input_size)
        assert len(x) == len(y) > 0
        assert 0 <= int(y.min()) and int(y.max()) < data.num_classes
    # Normalised on the training part: zero mean and unit spread there, per channel.
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (data.x_train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    assert "x_train" not in repr(data)  # the repr stays one short line


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_keeps_validation_and_test_apart(name: str, idx_folder: Path, monkeypatch) -> None:
    from _data_folders import accept_generated_cifar, write_cifar10, write_cifar100, write_imagefolder

    # The folders hold no image twice, so a shared row would be a shared sample. One normalisation
    # maps equal images to equal rows in every split.
    accept_generated_cifar(monkeypatch)
    write_cifar10(idx_folder)
    write_cifar100(idx_folder)
    write_imagefolder(idx_folder)
    data = _load(name, data_dir=idx_folder)
    train, held, tested = _rows(data.x_train), _rows(data.x_holdout), _rows(data.x_test)
    assert len(held) == len(data.x_holdout) and len(tested) == len(data.x_test)
    assert not held & tested, f"task {name!r}: validation and test share {len(held & tested)} samples"
    assert not train & (held | tested), f"task {name!r}: training shares samples with validation or test"


def test_list_and_register() -> None:
    assert {"digits", "mnist", "fashion_mnist"} <= set(list_tasks())
    assert list_tasks() == sorted(list_tasks())

    @register_task("_test_tiny")
    def _tiny(options, *, seed, holdout, test, data_dir):
        x = torch.zeros(4, 1, 2, 2)
        y = torch.tensor([0, 1, 0, 1])
        return TaskData("_test_tiny", x, y, x, y, in_channels=1, num_classes=2, input_size=(2, 2), x_test=x, y_test=y)

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


@pytest.mark.parametrize("test", [0, 1, -0.1, True, "0.2", float("nan")])
def test_test_fraction_outside_the_open_unit_interval_is_refused(test) -> None:
    with pytest.raises(SqueezeError, match=r"`task\.test` must be a fraction strictly between 0 and 1"):
        _load("digits", test=test)


def test_a_loader_without_a_test_split_is_refused() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match="x_test"):
        TaskData("_no_test", x, y, x, y, in_channels=1, num_classes=2, input_size=(2, 2))  # type: ignore[call-arg]


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
    with pytest.raises(SqueezeError, match=r"`task\.options\.lmit` .* the allowed keys are \['holdout_limit', 'input_size', 'limit', 'mean', 'std', 'test_limit'\]"):
        _load("mnist", options={"lmit": 5}, data_dir=idx_folder)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_limit_must_be_a_positive_integer(value, idx_folder: Path) -> None:
    with pytest.raises(SqueezeError, match=r"`task\.options\.limit` must be a positive integer"):
        _load("mnist", options={"limit": value}, data_dir=idx_folder)


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_and_split() -> None:
    data = _load("digits", holdout=0.2, test=0.2)
    assert data.input_size == (8, 8) and data.in_channels == 1 and data.num_classes == 10
    assert len(data.x_train) + len(data.x_holdout) + len(data.x_test) == 1797
    assert len(data.x_test) == 360  # ceil(0.2 * 1797)
    assert len(data.x_holdout) == 288  # ceil(0.2 * 1437), the rest
    # Stratified: every class is on both sides, in about the same proportion.
    train_share = torch.bincount(data.y_train, minlength=10) / len(data.y_train)
    held_share = torch.bincount(data.y_holdout, minlength=10) / len(data.y_holdout)
    assert (train_share - held_share).abs().max() < 0.01


def test_digits_is_deterministic_in_the_seed() -> None:
    a, b, c = _load("digits", seed=7), _load("digits", seed=7), _load("digits", seed=8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_holdout, b.y_holdout) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_holdout, c.y_holdout) and not torch.equal(a.y_test, c.y_test)


def test_the_test_split_does_not_move_when_holdout_changes() -> None:
    # Carved first, from a seed of its own: a study that changes its validation share tests on the same images.
    a, b = _load("digits", holdout=0.1, seed=3), _load("digits", holdout=0.4, seed=3)
    assert len(a.x_holdout) < len(b.x_holdout)
    assert _digit_levels(a, a.x_test) == _digit_levels(b, b.x_test) and torch.equal(a.y_test, b.y_test)


def _digit_levels(data: TaskData, x: torch.Tensor) -> list[bytes]:
    """Undo the normalisation of digits: raw pixels are 0..16 and both ends occur in the training part."""
    lo, hi = data.x_train.min(), data.x_train.max()
    levels = torch.round(16 * (x - lo) / (hi - lo)).to(torch.uint8)
    return [row.numpy().tobytes() for row in levels.reshape(len(x), -1)]


def test_digits_splits_do_not_overlap() -> None:
    from collections import Counter

    from sklearn.datasets import load_digits

    data = _load("digits", seed=3, holdout=0.3)

    def raw(x: torch.Tensor) -> list[bytes]:
        return _digit_levels(data, x)

    images = load_digits().images.astype(np.uint8).reshape(1797, -1)
    # Each image lands in exactly one split: the three add up to the data set, no more, no less.
    assert Counter(raw(data.x_train)) + Counter(raw(data.x_holdout)) + Counter(raw(data.x_test)) \
        == Counter(r.tobytes() for r in images)


def test_normalisation_uses_the_training_part_only(tmp_path: Path) -> None:
    # Dark training images, bright held-out ones: statistics of both would centre neither.
    labels = np.arange(40) % 10
    dark = np.random.default_rng(0).integers(0, 100, size=(40, 6, 6))
    bright = np.random.default_rng(1).integers(150, 256, size=(40, 6, 6))
    for prefix, images in (("train", dark), ("t10k", bright)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    data = _load("mnist", data_dir=tmp_path)
    bright_pixels = torch.from_numpy(bright.astype(np.float32) / 255).flatten()
    # t10k is the test split, mapped by one affine map (x - mean) / std; solve it for the mean and std used.
    tested = data.x_test[:, 0].flatten()
    slope, intercept = np.polyfit(bright_pixels.numpy(), tested.numpy(), 1)
    assert np.allclose(slope * bright_pixels.numpy() + intercept, tested.numpy(), atol=1e-4)
    mean, std = -intercept / slope, 1 / slope
    assert mean < 100 / 255 and std < 0.2  # the dark training images' statistics, not the bright ones'
    assert data.x_train.mean().abs() < 1e-4 and data.x_test.mean() > 2


# --- IDX reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_both_pairs_validate_on_part_of_train_and_test_on_t10k(tmp_path: Path, gz: bool) -> None:
    _write_pair(tmp_path, "train", 60, gz=gz, seed=1)
    _write_pair(tmp_path, "t10k", 30, gz=gz, seed=2)
    data = _load("mnist", data_dir=tmp_path, holdout=0.25, test=0.9)  # `test` unused: t10k is the test split
    assert data.x_train.shape == (45, 1, 6, 6) and data.x_holdout.shape == (15, 1, 6, 6)
    assert data.x_test.shape == (30, 1, 6, 6) and data.input_size == (6, 6)
    # The pixels survive parsing: t10k comes back in file order through one affine map (the normalisation)...
    tested = np.random.default_rng(2).integers(0, 256, size=(30, 6, 6)).flatten().astype(np.float64)
    slope, intercept = np.polyfit(tested, data.x_test.flatten().double().numpy(), 1)
    assert np.abs(slope * tested + intercept - data.x_test.flatten().double().numpy()).max() < 1e-4
    assert torch.equal(data.y_test, torch.arange(30) % 10)

    # ...and the train file is split between training and validation, each image on one side.
    def restore(x: torch.Tensor) -> list[bytes]:
        levels = np.round((x.double().numpy() - intercept) / slope).astype(np.uint8)
        return [row.tobytes() for row in levels.reshape(len(x), -1)]

    written = np.random.default_rng(1).integers(0, 256, size=(60, 6, 6)).astype(np.uint8)
    assert sorted(restore(data.x_train) + restore(data.x_holdout)) == sorted(row.tobytes() for row in written.reshape(60, -1))


def test_one_pair_is_split_seeded_and_stratified(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 100, gz=False)
    a = _load("mnist", data_dir=tmp_path, holdout=0.25, test=0.2, seed=5)
    b = _load("mnist", data_dir=tmp_path, holdout=0.25, test=0.2, seed=5)
    assert (len(a.x_train), len(a.x_holdout), len(a.x_test)) == (60, 20, 20)
    assert torch.equal(torch.bincount(a.y_holdout), torch.full((10,), 2))
    assert torch.equal(torch.bincount(a.y_test), torch.full((10,), 2))
    assert torch.equal(a.x_holdout, b.x_holdout) and torch.equal(a.x_test, b.x_test)
    train, held, tested = _rows(a.x_train), _rows(a.x_holdout), _rows(a.x_test)  # random 6x6 images are all distinct
    assert not train & held and not train & tested and not held & tested


def test_a_train_pair_alone_is_split_too(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", 80, gz=True)
    data = _load("fashion_mnist", data_dir=tmp_path, holdout=0.25, test=0.25)
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (45, 15, 20)


def test_plain_file_is_preferred_over_its_gz_copy(tmp_path: Path) -> None:
    _write_pair(tmp_path, "t10k", 80, gz=False)
    # A broken .gz next to the extracted file, as a half-finished copy might leave, is not read.
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    assert len(_load("mnist", data_dir=tmp_path, holdout=0.25, test=0.2).x_train) == 48  # 80 - 16 to test - 16 to validate


def test_limits_subsample_each_part_seeded(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", 200, gz=False)
    _write_pair(tmp_path, "t10k", 100, gz=False, seed=1)
    limits = {"limit": 50, "holdout_limit": 20, "test_limit": 30}
    a = _load("mnist", data_dir=tmp_path, options=limits, seed=4)
    b = _load("mnist", data_dir=tmp_path, options=limits, seed=4)
    assert (len(a.x_train), len(a.x_holdout), len(a.x_test)) == (50, 20, 30)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert torch.equal(torch.bincount(a.y_train), torch.full((10,), 5))  # stratified
    assert torch.equal(torch.bincount(a.y_test), torch.full((10,), 3))
    # A limit above the size keeps everything; a tiny one still works without stratifying.
    assert len(_load("mnist", data_dir=tmp_path, options={"limit": 10_000}).x_train) == 150  # 200 less 50 to validate
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
    # The folder holds t10k alone: all three splits come out of its 10,000 images, disjoint.
    data = _load("mnist", data_dir=mnist_dir, holdout=0.1, test=0.1, seed=0)
    assert data.x_test.shape == (1000, 1, 28, 28) and data.x_holdout.shape == (900, 1, 28, 28)
    assert data.x_train.shape == (8100, 1, 28, 28)
    counts = torch.bincount(torch.cat([data.y_train, data.y_holdout, data.y_test]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the published ones
    train, held, tested = _rows(data.x_train), _rows(data.x_holdout), _rows(data.x_test)  # no image occurs twice in t10k
    assert len(train) + len(held) + len(tested) == 10_000 and not held & tested and not train & (held | tested)
    assert data.x_train.mean().abs() < 1e-4 and (data.x_train.std() - 1).abs() < 1e-4
    small = _load("mnist", data_dir=mnist_dir, options={"limit": 500, "holdout_limit": 100, "test_limit": 200}, seed=0)
    assert (len(small.x_train), len(small.x_holdout), len(small.x_test)) == (500, 100, 200)
    assert set(small.y_train.tolist()) == set(range(10))
