"""Data from a user's folders: CIFAR-10/100 in torchvision's layout, ImageFolder trees, a user's
``package.module:function``; input size and normalisation from the study file; wrong layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from _data_folders import accept_generated_cifar, write_cifar10, write_cifar100, write_imagefolder
from squeeze.objectives import TaskData, load_task
from squeeze.spaces import SqueezeError


def _load(name: str, data_dir: Path | None = None, **options) -> TaskData:
    return load_task(name, options=options, seed=0, holdout=0.25, data_dir=data_dir)


# --- CIFAR ----------------------------------------------------------------------------------------


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated CIFAR batches pass torchvision's checksum test (only in the tests that ask for it)."""
    accept_generated_cifar(monkeypatch)


def test_cifar10_reads_torchvisions_layout_from_the_root_or_the_batches_folder(tmp_path: Path, generated) -> None:
    write_cifar10(tmp_path, per_batch=20)
    data = _load("cifar10", tmp_path)
    assert (data.in_channels, data.num_classes, data.input_size) == (3, 10, (32, 32))
    assert len(data.x_test) == 20  # the test batch is the test split; validation comes out of the training batches
    assert len(data.x_train) == 75 and len(data.x_holdout) == 25
    same = _load("cifar10", tmp_path / "cifar-10-batches-py")
    assert torch.equal(same.x_train, data.x_train)


def test_cifar10_pixels_and_labels_are_the_files(tmp_path: Path, generated) -> None:
    write_cifar10(tmp_path, per_batch=10)
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    data = _load("cifar10", tmp_path, mean=0.0, std=1.0)
    expected = torch.from_numpy(batch["data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(data.x_test, expected)
    assert data.y_test.tolist() == batch["labels"]


def test_cifar_limits_and_cifar100(tmp_path: Path, generated) -> None:
    write_cifar10(tmp_path, per_batch=20)
    data = _load("cifar10", tmp_path, limit=30, holdout_limit=10, test_limit=12)
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (30, 10, 12)
    write_cifar100(tmp_path, n=400)
    data = _load("cifar100", tmp_path)
    assert data.num_classes == 100 and (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (300, 100, 400)


def test_a_cifar_folder_in_the_wrong_layout_names_the_folder_and_the_layout(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1.png").write_bytes(b"x")
    with pytest.raises(SqueezeError, match=rf"`{tmp_path}` \(`task\.data`\) is not in torchvision's layout: a folder "
                                          r"`cifar-10-batches-py` holding `data_batch_1`.*`test_batch`.*; `data_batch_1` is missing"):
        _load("cifar10", tmp_path)
    with pytest.raises(SqueezeError, match=r"`task\.data` must name a folder in torchvision's layout"):
        _load("cifar10", None)


def test_batches_that_are_not_the_published_files_are_refused_unread(tmp_path: Path) -> None:
    # Without the tests' checksum bypass: torchvision compares every file with the published MD5
    # before unpickling it, so a planted batch never runs.
    write_cifar10(tmp_path, per_batch=4)
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (marker.write_text, ("planted code ran",))

    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({"data": Planted(), "labels": [0]}, f)
    with pytest.raises(SqueezeError, match=r"is not in torchvision's layout: .* torchvision says: Dataset not found or corrupted\.$"):
        _load("cifar10", tmp_path)
    assert not marker.exists()


# --- ImageFolder ----------------------------------------------------------------------------------


def test_imagefolder_with_train_and_val(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=6, classes=3, size=12)
    data = _load("imagefolder", tmp_path)
    assert (data.in_channels, data.num_classes, data.input_size) == (3, 3, (12, 12))
    # val/ is the validation split; with no test/, the test split is carved out of train/ (0.2 of 18).
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (14, 9, 4)
    gray = _load("imagefolder", tmp_path, channels=1, input_size=[8, 10])
    assert gray.in_channels == 1 and gray.input_size == (8, 10)


def test_imagefolder_without_a_held_out_folder_is_split(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=8, classes=2, split=False)
    data = _load("imagefolder", tmp_path)
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (9, 3, 4)  # 16: 4 to test, 3 of 12 to validate


def test_imagefolder_test_folder_is_the_test_split(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=6, classes=3, test=True)
    data = _load("imagefolder", tmp_path)
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (18, 9, 9)
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    data = _load("imagefolder", tmp_path)  # no val/: validation comes out of train/ (0.25 of 18)
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (13, 5, 9)


def test_images_of_different_sizes_need_an_input_size(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=4, classes=2, size=12)
    write_imagefolder(tmp_path / "train", per_class=2, classes=2, size=9, split=False, seed=1)
    with pytest.raises(SqueezeError, match=r"differ in size .* set `task\.options\.input_size`"):
        _load("imagefolder", tmp_path)
    assert _load("imagefolder", tmp_path, input_size=10).input_size == (10, 10)


def test_a_folder_that_is_not_an_imagefolder_tree_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(SqueezeError, match=rf"`{tmp_path}` \(`task\.data`\) is not an ImageFolder tree: .* expected "
                                          r"`train/<class>/<image>` with `val/<class>/<image>`"):
        _load("imagefolder", tmp_path)


def test_an_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=4, classes=2)
    bad = tmp_path / "train" / "class_0" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SqueezeError, match=r"broken\.png` cannot be read as an image"):
        _load("imagefolder", tmp_path)


# --- input size and normalisation -----------------------------------------------------------------


def test_input_size_and_a_fixed_normalisation(tmp_path: Path, generated) -> None:
    write_cifar10(tmp_path, per_batch=10)
    raw = _load("cifar10", tmp_path, mean=0.0, std=1.0)
    fixed = _load("cifar10", tmp_path, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], input_size=16)
    assert fixed.input_size == (16, 16)
    resized = torch.nn.functional.interpolate(raw.x_train, size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(fixed.x_train, (resized - 0.5) / 0.25, atol=1e-5)
    fitted = _load("cifar10", tmp_path)  # without mean and std: fitted on the training part
    assert fitted.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4


@pytest.mark.parametrize(("options", "message"), [
    ({"input_size": 0}, r"`task\.options\.input_size` must be a positive integer or a list \[height, width\]"),
    ({"input_size": [32]}, r"`task\.options\.input_size` must be"),
    ({"mean": 0.5}, r"`task\.options\.mean` is given without `task\.options\.std`; give both or neither"),
    ({"mean": [0.5], "std": [0.0]}, r"`task\.options\.std` must be positive"),
    ({"mean": "0.5", "std": 1.0}, r"`task\.options\.mean` must be a number or a list of numbers"),
    ({"mean": [0.1, 0.2], "std": [1.0, 1.0]}, r"`task\.options\.mean` must give one number or one per channel \(3\)"),
])
def test_bad_image_options_name_the_key(options: dict, message: str, tmp_path: Path, generated) -> None:
    write_cifar10(tmp_path, per_batch=4)
    with pytest.raises(SqueezeError, match=message):
        _load("cifar10", tmp_path, **options)


def test_mnist_takes_input_size(mnist_dir: Path) -> None:
    data = _load("mnist", mnist_dir, limit=50, holdout_limit=20, input_size=16, mean=0.1307, std=0.3081)
    assert data.input_size == (16, 16) and data.in_channels == 1


# --- a user's data set ----------------------------------------------------------------------------


def test_a_user_data_set_from_package_module_function() -> None:
    data = _load("_user_models:load_data", None, kwargs={"size": 8})
    assert (data.in_channels, data.num_classes, data.input_size) == (2, 4, (8, 8))
    # (train, test): a pair of arrays, and a Dataset; validation comes out of the training part.
    assert (len(data.x_train), len(data.x_holdout), len(data.x_test)) == (30, 10, 20)
    three = _load("_user_models:load_data", None, kwargs={"size": 8, "validation": True})
    assert (len(three.x_train), len(three.x_holdout), len(three.x_test)) == (40, 10, 20)


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_package.data:load", r"`task\.dataset` = 'no_such_package\.data:load' does not import \(ModuleNotFoundError"),
    ("_user_models:nothing", r"module `_user_models` has no attribute `nothing`"),
    ("_user_models:broken_data", r"`task\.dataset` = '_user_models:broken_data' raised OSError: the share is not mounted"),
    ("_user_models:not_pairs", r"returned a training part that is not images and labels"),
])
def test_a_user_data_set_that_fails_is_one_sentence(name: str, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        _load(name)
