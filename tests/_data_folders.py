"""Writers of small data folders in the layouts users have on disk, from generated images.

Shared by the task tests and the study tests (``tests/`` is on ``sys.path`` through its conftest).
Each image is a class-dependent pattern plus noise, so a tiny network can learn something.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def images(n: int, *, classes: int, size: int = 32, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``N, C, H, W`` whose mean brightness follows the class, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = (labels * (200 // max(1, classes - 1)))[:, None, None, None]
    noise = rng.integers(0, 56, size=(n, channels, size, size))
    return (base + noise).clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def _pickle(path: Path, obj: dict) -> None:
    # String keys, as the original Python 2 batches read with encoding="latin1" (torchvision's reader) give.
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, *, per_batch: int = 20, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` as torchvision leaves it: five data batches, a test batch, the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x, y = images(per_batch, classes=10, seed=seed + i)
        _pickle(folder / name, {"batch_label": name.encode(), "labels": y.tolist(),
                                "data": x.reshape(len(x), -1), "filenames": [f"{j}.png".encode() for j in range(len(x))]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}".encode() for k in range(10)], "num_vis": 3072})
    return root


def write_cifar100(root: Path, *, n: int = 400, seed: int = 0) -> Path:
    """``root/cifar-100-python``: ``train``, ``test`` and ``meta``, with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("train", "test")):
        x, y = images(n, classes=100, seed=seed + i)
        _pickle(folder / name, {"data": x.reshape(len(x), -1), "fine_labels": y.tolist(),
                                "coarse_labels": (y // 5).tolist(), "filenames": [b"x.png"] * len(x)})
    _pickle(folder / "meta", {"fine_label_names": [b"f"] * 100, "coarse_label_names": [b"c"] * 20})
    return root


def write_imagefolder(root: Path, *, per_class: int = 6, classes: int = 3, size: int = 12, split: bool = True,
                      test: bool = False, seed: int = 0) -> Path:
    """An ImageFolder tree of PNG files: ``train/`` and ``val/`` (and ``test/`` with ``test=True``), or class
    folders at the top with ``split=False``. Every part draws its own images, so no two parts share one."""
    from PIL import Image

    parts = [("train", per_class), ("val", max(2, per_class // 2))] if split else [("", per_class)]
    if split and test:
        parts.append(("test", max(2, per_class // 2)))
    for i, (part, count) in enumerate(parts):
        x, y = images(count * classes, classes=classes, size=size, seed=seed + 100 * i)
        for k, (img, label) in enumerate(zip(x, y)):
            folder = root / part / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{k}.png")
    return root


def accept_generated_cifar(monkeypatch) -> None:
    """Let torchvision's CIFAR reader take generated batches: it checks each file's MD5 against the
    published data set, which no generated file can match (and which keeps planted files unread)."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
