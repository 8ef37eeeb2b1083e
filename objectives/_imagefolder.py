"""Task ``imagefolder``: a tree of image files, one folder per class, read with Pillow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.spaces import SqueezeError

from ._normalise import task_data
from ._splits import split, subsample, substream
from ._task_options import image_options
from ._task_registry import TaskData, register_task

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
    opts = image_options("imagefolder", options, extra=("channels",))
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
        train_idx, held_idx = split(y, test=holdout, seed=seed, what=f"the ImageFolder tree `{data_dir}`")
        held_files, y_held = files, y
    keep = train_idx[subsample(y[train_idx], opts.limit, seed=substream(seed, 1), what="the training part")]
    keep_held = held_idx[subsample(y_held[held_idx], opts.holdout_limit, seed=substream(seed, 2), what="the held-out part")]
    x_train = _read_images([files[i] for i in keep], mode=mode, size=opts.input_size, folder=data_dir)
    x_held = _read_images([held_files[i] for i in keep_held], mode=mode, size=opts.input_size, folder=data_dir)
    if x_train.shape[1:] != x_held.shape[1:]:
        raise SqueezeError(
            f"training and held-out images in `{data_dir}` differ in size ({x_train.shape[2:]} and {x_held.shape[2:]}); "
            f"set `task.options.input_size` to resize them all."
        )
    return task_data("imagefolder", x_train / np.float32(255), y[keep], x_held / np.float32(255), y_held[keep_held],
                      num_classes=len(train), image=opts)
