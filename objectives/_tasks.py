"""Tasks: the data a study trains on and the held-out part it is judged on.

A task is a loader registered by name (timm's ``@register_model`` habit) and called through
:func:`load_task`. Every loader returns a :class:`TaskData` whose inputs are normalised with a
mean and standard deviation computed on the training part only, so nothing about the held-out
part leaks into training, unless the study file gives its own (``[task.options] mean`` and
``std``, as torchvision's ``Normalize`` takes them, on pixel values in [0, 1]). ``input_size``
resizes every image. Nothing is ever downloaded: MNIST-like tasks read a local folder of IDX
files, the format of LeCun's site and of torchvision's ``raw/`` folders; CIFAR-10/100, ImageFolder
trees and a user's own ``package.module:function`` are in ``_folders.py``.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from squeeze.spaces import SqueezeError


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's tensors: ``x`` is float32 ``N, C, H, W``, ``y`` is int64 ``N``.

    ``x_train`` and ``x_holdout`` share one normalisation, fitted on ``x_train``; the held-out
    part is never trained on. ``eq=False`` because comparing tensors field by field is ambiguous.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_holdout: torch.Tensor = field(repr=False)
    y_holdout: torch.Tensor = field(repr=False)
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        # A registered loader may come from outside this package, so check its output once here
        # rather than fail deep inside a training loop.
        shape = (self.in_channels, *self.input_size)
        for part in ("train", "holdout"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.dtype != torch.float32 or x.dim() != 4 or tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"`x_{part}` of task {self.name!r} must be float32 of shape (N, {', '.join(map(str, shape))}), "
                    f"but got {x.dtype} of shape {tuple(x.shape)}."
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise ValueError(
                    f"`y_{part}` of task {self.name!r} must be int64 of shape ({len(x)},), "
                    f"but got {y.dtype} of shape {tuple(y.shape)}."
                )
            if len(y) == 0:
                raise ValueError(f"`{part}` part of task {self.name!r} must not be empty, but has 0 samples.")


class TaskLoader(Protocol):
    """A registered loader: checks its own ``options`` and returns the task's data.

    ``seed`` and ``holdout`` arrive already checked; ``data_dir`` is a ``Path`` or ``None``.
    """

    def __call__(
        self, options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None
    ) -> TaskData: ...


_TASKS: dict[str, TaskLoader] = {}


def register_task(name: str) -> Callable[[TaskLoader], TaskLoader]:
    """Function decorator: register a task loader under ``name``."""

    def wrap(loader: TaskLoader) -> TaskLoader:
        _TASKS[name] = loader
        return loader

    return wrap


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def load_task(
    name: str,
    *,
    options: Mapping[str, Any],
    seed: int,
    holdout: float,
    data_dir: str | Path | None,
) -> TaskData:
    """Load task ``name``: its training part and its held-out part, normalised on the training part.

    ``holdout`` is the fraction held out when the task has no held-out split of its own;
    ``options`` is the study file's ``[task.options]`` table; ``data_dir`` is the folder the task
    reads (``task.data``), ignored by tasks that bring their own data.
    """
    loader = task_loader(name)
    if not isinstance(options, Mapping):
        raise SqueezeError(f"`task.options` must be a table, but got {options!r}.")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise SqueezeError(f"`task.holdout` must be a fraction strictly between 0 and 1, but got {holdout!r}.")
    # sklearn's random_state and numpy's generators both want a non-negative integer.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SqueezeError(f"`seed` must be an integer in [0, 2**32), but got {seed!r}.")
    return loader(options, seed=seed, holdout=float(holdout), data_dir=None if data_dir is None else Path(data_dir))


def task_loader(name: str) -> TaskLoader:
    """The loader of task ``name``: a registered name, or a user's ``package.module:function``.

    Raises a SqueezeError naming ``task.dataset`` when the name is unknown or does not import.
    """
    if isinstance(name, str) and ":" in name:
        from ._folders import user_task

        return user_task(name)
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise SqueezeError(
            f"`task.dataset` must be one of {list_tasks()}, but got {name!r}; a user's data set is named `package.module:function`."
        ) from None


# --- shared helpers ---------------------------------------------------------------------------


def _check_options(task: str, options: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, int | None]:
    """Reject unknown keys; every allowed key is an optional positive integer."""
    for key in options:
        if key not in allowed:
            allowed_text = f"the allowed keys are {sorted(allowed)}" if allowed else "it takes no options"
            raise SqueezeError(f"`task.options.{key}` is not an option of task {task!r}; {allowed_text}.")
    checked: dict[str, int | None] = {}
    for key in allowed:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SqueezeError(f"`task.options.{key}` must be a positive integer, but got {value!r}.")
        checked[key] = value
    return checked


IMAGE_OPTIONS = ("holdout_limit", "input_size", "limit", "mean", "std")
"""``[task.options]`` keys every image task takes."""


@dataclass(frozen=True)
class ImageOptions:
    """Checked image-task options: sample limits, the input size and a fixed normalisation."""

    limit: int | None = None
    holdout_limit: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _image_options(task: str, options: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> ImageOptions:
    """Check the image options of ``task`` (``extra`` keys are left to the loader to check)."""
    allowed = (*IMAGE_OPTIONS, *extra)
    _check_options(task, {k: v for k, v in options.items() if k not in ("input_size", "mean", "std", *extra)}, allowed)
    size = options.get("input_size")
    if size is not None:
        pair = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(pair, list) or len(pair) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in pair
        ):
            raise SqueezeError(
                f"`task.options.input_size` must be a positive integer or a list [height, width] of two, but got {size!r}."
            )
        size = (pair[0], pair[1])
    stats: dict[str, tuple[float, ...] | None] = {}
    for key in ("mean", "std"):
        value = options.get(key)
        if value is None:
            stats[key] = None
            continue
        values = [value] if not isinstance(value, list) else value
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise SqueezeError(f"`task.options.{key}` must be a number or a list of numbers (one per channel), but got {value!r}.")
        if key == "std" and min(values) <= 0:
            raise SqueezeError(f"`task.options.std` must be positive, but got {value!r}.")
        stats[key] = tuple(float(v) for v in values)
    if (stats["mean"] is None) != (stats["std"] is None):
        given, missing = ("mean", "std") if stats["std"] is None else ("std", "mean")
        raise SqueezeError(f"`task.options.{given}` is given without `task.options.{missing}`; give both or neither.")
    return ImageOptions(
        limit=options.get("limit"), holdout_limit=options.get("holdout_limit"), input_size=size,
        mean=stats["mean"], std=stats["std"], extra={k: options[k] for k in extra if k in options},
    )


def _resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize with antialiasing, in chunks (a whole data set at once would double its memory)."""
    if size is None or tuple(x.shape[2:]) == size:
        return x
    import torch.nn.functional as F

    chunks = [
        F.interpolate(x[i : i + 2048], size=size, mode="bilinear", antialias=True, align_corners=False)
        for i in range(0, len(x), 2048)
    ]
    return torch.cat(chunks) if chunks else x.new_zeros(0, x.shape[1], *size)


def _substream(seed: int, stream: int) -> int:
    """A seed for one use of randomness, independent of the other uses of the same study seed."""
    return int(np.random.default_rng([seed, stream]).integers(2**32))


def _split(y: np.ndarray, *, test: int | float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))``; both parts sorted, so file order is kept.

    ``test`` is a fraction or a count, as in scikit-learn's ``train_test_split``.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_test = math.ceil(test * n) if isinstance(test, float) else test
    classes, counts = np.unique(y, return_counts=True)
    # Checked here so the user reads which setting to change, not scikit-learn's ValueError.
    if min(n_test, n - n_test) < len(classes):
        raise SqueezeError(
            f"`task.holdout` must leave at least {len(classes)} samples (one per class) on each side of the "
            f"split of {what}, but {test!r} of {n} samples gives {n - n_test} to train and {n_test} held out."
        )
    if counts.min() < 2:
        raise SqueezeError(
            f"{what} must hold at least 2 samples of every class to be split stratified, "
            f"but class {classes[counts.argmin()]} has 1."
        )
    idx = np.arange(n)
    train, held = train_test_split(idx, test_size=n_test, random_state=seed, stratify=y)
    return np.sort(train), np.sort(held)


def _subsample(y: np.ndarray, limit: int | None, *, seed: int, what: str) -> np.ndarray:
    """Sorted indices of at most ``limit`` samples, stratified where the class counts allow it."""
    n = len(y)
    if limit is None or limit >= n:
        return np.arange(n)
    classes, counts = np.unique(y, return_counts=True)
    if limit >= len(classes) and n - limit >= len(classes) and counts.min() >= 2:
        kept, _ = _split(y, test=n - limit, seed=seed, what=what)
        return kept
    # Too few samples to keep every class in proportion: a plain seeded draw is the honest fallback.
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _task_data(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_holdout: np.ndarray,
    y_holdout: np.ndarray,
    *,
    num_classes: int,
    image: ImageOptions | None = None,
) -> TaskData:
    """Resize to ``image.input_size``, normalise per channel and wrap as tensors.

    The normalisation is ``image.mean`` and ``image.std`` when the study file gives them, else the
    statistics of the training part only.
    """
    image = image or ImageOptions()
    xt = _resize(torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32)), image.input_size)
    xh = _resize(torch.as_tensor(np.ascontiguousarray(x_holdout, dtype=np.float32)), image.input_size)
    if image.mean is not None and image.std is not None:
        channels = xt.shape[1]
        for key, values in (("mean", image.mean), ("std", image.std)):
            if len(values) not in (1, channels):
                raise SqueezeError(
                    f"`task.options.{key}` must give one number or one per channel ({channels}) of task {name!r}, "
                    f"but gives {len(values)}."
                )
        mean = torch.tensor(image.mean).expand(channels).reshape(1, channels, 1, 1)
        std = torch.tensor(image.std).expand(channels).reshape(1, channels, 1, 1)
    else:
        mean = xt.mean(dim=(0, 2, 3), keepdim=True)
        std = xt.std(dim=(0, 2, 3), keepdim=True)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays finite, not NaN
    return TaskData(
        name=name,
        x_train=(xt - mean) / std,
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_holdout=(xh - mean) / std,
        y_holdout=torch.from_numpy(np.asarray(y_holdout, dtype=np.int64)),
        in_channels=xt.shape[1],
        num_classes=num_classes,
        input_size=(xt.shape[2], xt.shape[3]),
    )


# --- digits -----------------------------------------------------------------------------------


@register_task("digits")
def _load_digits(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images); ``data_dir`` is not used."""
    from sklearn.datasets import load_digits

    _check_options("digits", options, ())
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    train, held = _split(y, test=holdout, seed=seed, what="the digits data")
    return _task_data("digits", x[train], y[train], x[held], y[held], num_classes=10)


# --- IDX folders (MNIST, Fashion-MNIST) -------------------------------------------------------

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
    name: str, options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None
) -> TaskData:
    opts = _image_options(name, options)
    expected = "`train-images-idx3-ubyte` with `train-labels-idx1-ubyte`, or the same with `t10k-` (each optionally `.gz`)"
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name a folder of IDX files ({expected}) for task {name!r}, but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be a folder of IDX files for task {name!r}, but `{data_dir}` is not a folder.")
    pairs = {prefix: _read_pair(data_dir, prefix) for prefix in _IDX_PREFIXES}
    train_pair, test_pair = pairs["train"], pairs["t10k"]
    if train_pair is not None and test_pair is not None:
        (x_train, y_train), (x_held, y_held) = train_pair, test_pair
        if x_train.shape[1:] != x_held.shape[1:]:
            raise SqueezeError(
                f"`{data_dir}` must hold train and t10k images of one size, "
                f"but they are {x_train.shape[2:]} and {x_held.shape[2:]}."
            )
    elif train_pair is not None or test_pair is not None:
        # Only one split on disk (a test set alone, say): hold out part of it ourselves.
        x, y = train_pair if train_pair is not None else test_pair
        train, held = _split(y, test=holdout, seed=seed, what=f"the IDX pair in `{data_dir}`")
        x_train, y_train, x_held, y_held = x[train], y[train], x[held], y[held]
    else:
        raise SqueezeError(f"`{data_dir}` (`task.data`) holds no IDX pair: expected {expected}.")
    keep = _subsample(y_train, opts.limit, seed=_substream(seed, 1), what="the training part")
    keep_held = _subsample(y_held, opts.holdout_limit, seed=_substream(seed, 2), what="the held-out part")
    return _task_data(
        name, x_train[keep], y_train[keep], x_held[keep_held], y_held[keep_held], num_classes=10, image=opts
    )


@register_task("mnist")
def _load_mnist(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """MNIST handwritten digits from a local folder of IDX files."""
    return _load_idx_folder("mnist", options, seed=seed, holdout=holdout, data_dir=data_dir)


@register_task("fashion_mnist")
def _load_fashion_mnist(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """Fashion-MNIST (Zalando's clothing images, MNIST's file layout) from a local folder of IDX files."""
    return _load_idx_folder("fashion_mnist", options, seed=seed, holdout=holdout, data_dir=data_dir)
