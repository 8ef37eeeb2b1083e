"""Tasks read from a user's folders: CIFAR-10/100, ImageFolder trees, and ``package.module:function``.

Nothing is downloaded. CIFAR folders are read in torchvision's on-disk layout (what
``torchvision.datasets.CIFAR10(root, download=True)`` leaves behind), by torchvision's reader, which
unpickles a batch only after its checksum matches the published file. Every image task takes the options of ``_tasks.IMAGE_OPTIONS`` (``limit``, ``holdout_limit``,
``input_size``, ``mean``, ``std``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeeze.spaces import SqueezeError, import_object

from ._tasks import (
    TaskData,
    TaskLoader,
    _image_options,
    _split,
    _subsample,
    _substream,
    _task_data,
    register_task,
)

# --- CIFAR ----------------------------------------------------------------------------------------


def _cifar(name: str, options: Mapping[str, Any], *, seed: int, data_dir: Path | None, folder: str) -> TaskData:
    """CIFAR-10 or -100 through torchvision's own reader, on the user's folder, never downloading.

    torchvision checks every batch file against the MD5 of the published data set before it
    unpickles it, so only the original files are ever unpickled: a planted or altered file is
    refused unread. (The project itself imports no pickle module.)
    """
    from torchvision import datasets

    opts = _image_options(name, options)
    reader = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    files = [f for f, _ in (*reader.train_list, *reader.test_list)] + [reader.meta["filename"]]
    layout = (
        f"torchvision's layout: a folder `{folder}` holding " + ", ".join(f"`{f}`" for f in files)
        + f", the original {title} files (torchvision checks their checksums), given as `task.data` or as that folder's parent"
    )
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name a folder in {layout}, for task {name!r}, but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be a folder in {layout}, but `{data_dir}` is not a folder.")
    root = data_dir.parent if data_dir.name == folder else data_dir
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise SqueezeError(f"`{data_dir}` (`task.data`) is not in {layout}; `{missing[0]}` is missing.")
    try:
        train = reader(str(root), train=True, download=False)
        held = reader(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        reason = str(exc).split(".")[0] or type(exc).__name__
        raise SqueezeError(f"`{data_dir}` (`task.data`) is not in {layout}; torchvision says: {reason}.") from None
    num_classes = len(train.classes)
    x_train, y_train = train.data.transpose(0, 3, 1, 2), np.asarray(train.targets, dtype=np.int64)
    x_held, y_held = held.data.transpose(0, 3, 1, 2), np.asarray(held.targets, dtype=np.int64)
    keep = _subsample(y_train, opts.limit, seed=_substream(seed, 1), what="the training part")
    keep_held = _subsample(y_held, opts.holdout_limit, seed=_substream(seed, 2), what="the held-out part")
    return _task_data(
        name, x_train[keep] / np.float32(255), y_train[keep], x_held[keep_held] / np.float32(255), y_held[keep_held],
        num_classes=num_classes, image=opts,
    )


@register_task("cifar10")
def _load_cifar10(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """CIFAR-10 from a local folder in torchvision's layout (``cifar-10-batches-py``); its test batch is held out."""
    return _cifar("cifar10", options, seed=seed, data_dir=data_dir, folder="cifar-10-batches-py")


@register_task("cifar100")
def _load_cifar100(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """CIFAR-100 (its 100 fine classes) from a local folder in torchvision's layout (``cifar-100-python``)."""
    return _cifar("cifar100", options, seed=seed, data_dir=data_dir, folder="cifar-100-python")


# --- ImageFolder ----------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ImageFolder extensions."""
_HELD_OUT = ("val", "test")


def _classes(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for every sub-folder holding at least one image."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            out[sub.name] = files
    return out


def _read_images(files: Sequence[Path], *, mode: str, size: tuple[int, int] | None, folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    arrays, first = [], None
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise SqueezeError(f"`{path}` cannot be read as an image: {str(exc).rstrip('.') or type(exc).__name__}.") from None
        first = first if first is not None else (path, a.shape)
        if a.shape != first[1]:
            raise SqueezeError(
                f"images in `{folder}` differ in size (`{first[0].name}` is {first[1][:2]}, `{path.name}` is {a.shape[:2]}); "
                f"set `task.options.input_size` to resize them all."
            )
        arrays.append(a if a.ndim == 3 else a[:, :, None])
    return np.stack(arrays).transpose(0, 3, 1, 2)


@register_task("imagefolder")
def _load_imagefolder(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
    """An ImageFolder tree: ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``), or ``<class>/*`` split by ``task.holdout``.

    Option ``channels``: 3 (RGB, the default) or 1 (grayscale).
    """
    opts = _image_options("imagefolder", options, extra=("channels",))
    channels = opts.extra.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise SqueezeError(f"`task.options.channels` must be 1 (grayscale) or 3 (RGB), but got {channels!r}.")
    layout = (
        "`train/<class>/<image>` with `val/<class>/<image>` (or `test/`), or `<class>/<image>` to be split by "
        f"`task.holdout`, with images ending in {', '.join(IMAGE_EXTENSIONS)}"
    )
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name an ImageFolder tree ({layout}), but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be an ImageFolder tree, but `{data_dir}` is not a folder.")
    held_dir = next((data_dir / h for h in _HELD_OUT if (data_dir / h).is_dir()), None)
    if (data_dir / "train").is_dir():
        train = _classes(data_dir / "train")
        held = _classes(held_dir) if held_dir is not None else {}
    else:
        train, held = _classes(data_dir), {}
    if len(train) < 2:
        raise SqueezeError(
            f"`{data_dir}` (`task.data`) is not an ImageFolder tree: it holds {len(train)} class folders with images; "
            f"expected {layout}, with at least two classes."
        )
    unknown = sorted(set(held) - set(train))
    if unknown:
        raise SqueezeError(f"`{held_dir}` holds class `{unknown[0]}`, which `{data_dir / 'train'}` lacks; both need the same classes.")
    index = {c: i for i, c in enumerate(train)}
    mode = "RGB" if channels == 3 else "L"

    def flatten(classes: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        files = [f for c in classes for f in classes[c]]
        return files, np.array([index[c] for c in classes for _ in classes[c]], dtype=np.int64)

    files, y = flatten(train)
    if held:
        held_files, y_held = flatten(held)
        train_idx, held_idx = np.arange(len(files)), np.arange(len(held_files))
    else:
        # No held-out folder: hold out part of the training tree, stratified and seeded.
        train_idx, held_idx = _split(y, test=holdout, seed=seed, what=f"the ImageFolder tree `{data_dir}`")
        held_files, y_held = files, y
    keep = train_idx[_subsample(y[train_idx], opts.limit, seed=_substream(seed, 1), what="the training part")]
    keep_held = held_idx[_subsample(y_held[held_idx], opts.holdout_limit, seed=_substream(seed, 2), what="the held-out part")]
    x_train = _read_images([files[i] for i in keep], mode=mode, size=opts.input_size, folder=data_dir)
    x_held = _read_images([held_files[i] for i in keep_held], mode=mode, size=opts.input_size, folder=data_dir)
    if x_train.shape[1:] != x_held.shape[1:]:
        raise SqueezeError(
            f"training and held-out images in `{data_dir}` differ in size ({x_train.shape[2:]} and {x_held.shape[2:]}); "
            f"set `task.options.input_size` to resize them all."
        )
    return _task_data("imagefolder", x_train / np.float32(255), y[keep], x_held / np.float32(255), y_held[keep_held],
                      num_classes=len(train), image=opts)


# --- a user's data set ----------------------------------------------------------------------------

DATA_EXPECTED = (
    "`package.module:function`, a function importable from this Python environment or the current folder that "
    "returns (train, held_out), each a pair (images N x C x H x W, labels N) or a Dataset of (image, label)"
)


def _as_arrays(part: Any, *, key: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as float images ``N, C, H, W`` and int64 labels from a pair or a map-style Dataset."""
    try:
        if isinstance(part, (tuple, list)) and len(part) == 2:
            x, y = torch.as_tensor(np.asarray(part[0])), torch.as_tensor(np.asarray(part[1]))
        elif hasattr(part, "__len__") and hasattr(part, "__getitem__"):
            items = [part[i] for i in range(len(part))]
            x = torch.stack([torch.as_tensor(np.asarray(a)) for a, _ in items]) if items else torch.zeros(0)
            y = torch.as_tensor([int(b) for _, b in items])
        else:
            raise TypeError(f"a {type(part).__name__}")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SqueezeError(f"`task.dataset` = {key!r} returned a {which} part that is not images and labels ({exc}); expected {DATA_EXPECTED}.") from None
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y) or len(x) == 0 or y.is_floating_point():
        raise SqueezeError(
            f"`task.dataset` = {key!r} returned a {which} part of images {tuple(x.shape)} and labels {tuple(y.shape)} "
            f"({y.dtype}); expected {DATA_EXPECTED}, non-empty, with integer labels."
        )
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x, y.long()


def user_task(name: str) -> TaskLoader:
    """The loader for a user's ``package.module:function`` data set.

    The function is called with the keyword arguments its signature takes among ``data_dir`` (the
    ``task.data`` folder, a Path or None) and ``seed``, plus ``[task.options] kwargs``. Images are
    floats (or uint8, read as 0..255); the usual image options apply.
    """
    function = import_object(name, key="task.dataset", expected=DATA_EXPECTED)
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        params = {}

    def load(options: Mapping[str, Any], *, seed: int, holdout: float, data_dir: Path | None) -> TaskData:
        opts = _image_options(name, options, extra=("kwargs",))
        kwargs = dict(opts.extra.get("kwargs", {}))
        if not isinstance(opts.extra.get("kwargs", {}), Mapping):
            raise SqueezeError(f"`task.options.kwargs` must be a table of keyword arguments of {name}, but got {opts.extra['kwargs']!r}.")
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for arg, value in (("data_dir", data_dir), ("seed", seed)):
            if arg in params or takes_any:
                kwargs[arg] = value
        try:
            result = function(**kwargs)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code failing is bad input, said in one sentence
            raise SqueezeError(
                f"`task.dataset` = {name!r} raised {type(exc).__name__}: {str(exc).rstrip('.')}; expected {DATA_EXPECTED}."
            ) from None
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise SqueezeError(f"`task.dataset` = {name!r} returned a {type(result).__name__}; expected {DATA_EXPECTED}.")
        (x_train, y_train), (x_held, y_held) = (_as_arrays(p, key=name, which=w) for p, w in zip(result, ("training", "held-out")))
        if x_train.shape[1:] != x_held.shape[1:] and opts.input_size is None:
            raise SqueezeError(
                f"`task.dataset` = {name!r} returned training images {tuple(x_train.shape[1:])} and held-out images "
                f"{tuple(x_held.shape[1:])}; they must match, or set `task.options.input_size`."
            )
        num_classes = int(max(y_train.max(), y_held.max())) + 1
        if min(int(y_train.min()), int(y_held.min())) < 0:
            raise SqueezeError(f"`task.dataset` = {name!r} returned negative labels; expected class indices 0, 1, 2, ...")
        keep = _subsample(y_train.numpy(), opts.limit, seed=_substream(seed, 1), what="the training part")
        keep_held = _subsample(y_held.numpy(), opts.holdout_limit, seed=_substream(seed, 2), what="the held-out part")
        return _task_data(name, x_train[keep].numpy(), y_train[keep].numpy(), x_held[keep_held].numpy(),
                          y_held[keep_held].numpy(), num_classes=num_classes, image=opts)

    return load
