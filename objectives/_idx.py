"""Tasks ``mnist`` and ``fashion_mnist``: a local folder of IDX files.

The format of LeCun's site and of torchvision's ``raw/`` folders: ``train-images-idx3-ubyte`` with
``train-labels-idx1-ubyte``, and/or the same with ``t10k-`` (each optionally ``.gz``). With both
pairs, ``t10k`` is the test split; with one, the test split is carved out of it.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.spaces import SqueezeError

from ._normalise import task_data
from ._splits import split, subsample_splits, three_way
from ._task_options import image_options
from ._task_registry import TaskData, register_task

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_PREFIXES = ("train", "t10k")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut-off .gz is an EOFError
        what = "a gzip file" if path.suffix == ".gz" else "a file"
        raise SqueezeError(f"`{path}` could not be read as {what}: {str(e).rstrip('.')}.") from None


def _read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes: a big-endian header, then the body, nothing more."""
    kind = "image" if magic == _IMAGES_MAGIC else "label"
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise SqueezeError(f"`{path}` is not an IDX {kind} file: it has {len(raw)} bytes, expected a header of {header}.")
    (found,) = struct.unpack(">i", raw[:4])
    if found != magic:
        raise SqueezeError(f"`{path}` is not an IDX {kind} file: magic number {found}, expected {magic}.")
    if len(raw) < header:
        raise SqueezeError(f"`{path}` is truncated: it has {len(raw)} bytes, expected a header of {header}.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    body = math.prod(dims)
    if len(raw) - header != body:
        raise SqueezeError(
            f"`{path}` is truncated or padded: its header {tuple(dims)} promises {body} bytes of data, "
            f"but {len(raw) - header} follow."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    # A torchvision raw/ folder keeps both the .gz and its extracted copy; the plain one reads faster.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The images (``N, 1, H, W`` in [0, 1]) and labels of one split, or None if it is absent."""
    images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        return None
    images = _read_idx(images_path, magic=_IMAGES_MAGIC)
    labels = _read_idx(labels_path, magic=_LABELS_MAGIC)
    if len(images) != len(labels):
        raise SqueezeError(
            f"`{labels_path}` must hold one label per image of `{images_path}`, "
            f"but it holds {len(labels)} labels for {len(images)} images."
        )
    if len(labels) and labels.max() >= 10:
        raise SqueezeError(f"`{labels_path}` must hold class labels 0 to 9, but holds {int(labels.max())}.")
    x = images[:, None, :, :].astype(np.float32)
    x /= 255.0  # in place: one float copy of the images, not two
    return x, labels.astype(np.int64)


def _load_idx_folder(
    name: str, options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None
) -> TaskData:
    """Both pairs: ``t10k`` is the test split, validation comes out of ``train``. One pair: split three ways."""
    opts = image_options(name, options)
    expected = "`train-images-idx3-ubyte` with `train-labels-idx1-ubyte`, or the same with `t10k-` (each optionally `.gz`)"
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name a folder of IDX files ({expected}) for task {name!r}, but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be a folder of IDX files for task {name!r}, but `{data_dir}` is not a folder.")
    pairs = {prefix: _read_pair(data_dir, prefix) for prefix in _IDX_PREFIXES}
    train_pair, test_pair = pairs["train"], pairs["t10k"]
    what = f"the IDX pair in `{data_dir}`"
    if train_pair is not None and test_pair is not None:
        (x, y), (x_test, y_test) = train_pair, test_pair
        if x.shape[1:] != x_test.shape[1:]:
            raise SqueezeError(
                f"`{data_dir}` must hold train and t10k images of one size, "
                f"but they are {x.shape[2:]} and {x_test.shape[2:]}."
            )
        train, held = split(y, test=holdout, seed=seed, what=what)
        x_train, y_train, x_held, y_held = x[train], y[train], x[held], y[held]
    elif train_pair is not None or test_pair is not None:
        # Only one split on disk (a test set alone, say): all three splits come out of it, disjoint.
        x, y = train_pair if train_pair is not None else test_pair
        train, held, tested = three_way(y, holdout=holdout, test=test, seed=seed, what=what)
        x_train, y_train, x_held, y_held, x_test, y_test = x[train], y[train], x[held], y[held], x[tested], y[tested]
    else:
        raise SqueezeError(f"`{data_dir}` (`task.data`) holds no IDX pair: expected {expected}.")
    keep, keep_held, keep_test = subsample_splits(
        y_train, y_held, y_test, limits=(opts.limit, opts.holdout_limit, opts.test_limit), seed=seed)
    return task_data(
        name, x_train[keep], y_train[keep], x_held[keep_held], y_held[keep_held], x_test[keep_test], y_test[keep_test],
        num_classes=10, image=opts,
    )


@register_task("mnist")
def _load_mnist(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """MNIST handwritten digits from a local folder of IDX files."""
    return _load_idx_folder("mnist", options, seed=seed, holdout=holdout, test=test, data_dir=data_dir)


@register_task("fashion_mnist")
def _load_fashion_mnist(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """Fashion-MNIST (Zalando's clothing images, MNIST's file layout) from a local folder of IDX files."""
    return _load_idx_folder("fashion_mnist", options, seed=seed, holdout=holdout, test=test, data_dir=data_dir)
