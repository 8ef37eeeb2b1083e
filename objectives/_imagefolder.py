"""Task ``imagefolder``: a tree of image files, one folder per class, read with Pillow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.spaces import SqueezeError

from ._normalise import task_data
from ._splits import split, subsample_splits, substream, three_way
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
def _load_imagefolder(options: Mapping[str, Any], *, seed: int, holdout: float, test: float, data_dir: Path | None) -> TaskData:
    """An ImageFolder tree: ``train/<class>/*`` with ``val/<class>/*`` and ``test/<class>/*``, or ``<class>/*``.

    ``val/`` is the validation split and ``test/`` the test split; either one missing is carved out
    of ``train/`` (by ``task.holdout`` and ``task.test``), and a tree of class folders alone is
    split three ways. Option ``channels``: 3 (RGB, the default) or 1 (grayscale).
    """
    opts = image_options("imagefolder", options, extra=("channels",))
    channels = opts.extra.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise SqueezeError(f"`task.options.channels` must be 1 (grayscale) or 3 (RGB), but got {channels!r}.")
    layout = (
        "`train/<class>/<image>` with `val/<class>/<image>` and/or `test/<class>/<image>`, or `<class>/<image>` to be "
        f"split by `task.holdout` and `task.test`, with images ending in {', '.join(IMAGE_EXTENSIONS)}"
    )
    if data_dir is None:
        raise SqueezeError(f"`task.data` must name an ImageFolder tree ({layout}), but none was given.")
    if not data_dir.is_dir():
        raise SqueezeError(f"`task.data` must be an ImageFolder tree, but `{data_dir}` is not a folder.")
    nested = (data_dir / "train").is_dir()
    train = _classes(data_dir / "train") if nested else _classes(data_dir)
    if len(train) < 2:
        raise SqueezeError(
            f"`{data_dir}` (`task.data`) is not an ImageFolder tree: it holds {len(train)} class folders with images; "
            f"expected {layout}, with at least two classes."
        )
    given = {part: _classes(data_dir / part) for part in _HELD_OUT if nested and (data_dir / part).is_dir()}
    for part, classes in given.items():
        unknown = sorted(set(classes) - set(train))
        if unknown:
            raise SqueezeError(
                f"`{data_dir / part}` holds class `{unknown[0]}`, which `{data_dir / 'train'}` lacks; both need the same classes."
            )
    index = {c: i for i, c in enumerate(train)}
    mode = "RGB" if channels == 3 else "L"

    def flatten(classes: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        files = [f for c in classes for f in classes[c]]
        return files, np.array([index[c] for c in classes for _ in classes[c]], dtype=np.int64)

    files, y = flatten(train)
    what = f"the ImageFolder tree `{data_dir}`"
    # Each split: (its files, their labels, the indices it takes of them), carving what the tree lacks out of train/.
    if not given.get("val") and not given.get("test"):
        train_idx, val_idx, test_idx = three_way(y, holdout=holdout, test=test, seed=seed, what=what)
        val_src, test_src = (files, y, val_idx), (files, y, test_idx)
    elif not given.get("test"):
        train_idx, test_idx = split(y, test=test, seed=substream(seed, 3), what=what, key="task.test")
        val_files, y_val = flatten(given["val"])
        val_src, test_src = (val_files, y_val, np.arange(len(val_files))), (files, y, test_idx)
    else:
        test_files, y_test = flatten(given["test"])
        test_src = (test_files, y_test, np.arange(len(test_files)))
        if given.get("val"):
            train_idx = np.arange(len(files))
            val_files, y_val = flatten(given["val"])
            val_src = (val_files, y_val, np.arange(len(val_files)))
        else:
            train_idx, val_idx = split(y, test=holdout, seed=seed, what=what)
            val_src = (files, y, val_idx)
    sources = [(files, y, train_idx), val_src, test_src]
    kept = subsample_splits(*(labels[idx] for _, labels, idx in sources),
                            limits=(opts.limit, opts.holdout_limit, opts.test_limit), seed=seed)
    arrays = []
    for (paths, labels, idx), keep in zip(sources, kept):
        chosen = idx[keep]
        images = _read_images([paths[i] for i in chosen], mode=mode, size=opts.input_size, folder=data_dir)
        arrays += [images / np.float32(255), labels[chosen]]
    shapes = {tuple(a.shape[1:]) for a in arrays[::2]}
    if len(shapes) > 1:
        raise SqueezeError(
            f"training, validation and test images in `{data_dir}` differ in size ({', '.join(str(s[1:]) for s in sorted(shapes))}); "
            f"set `task.options.input_size` to resize them all."
        )
    return task_data("imagefolder", *arrays, num_classes=len(train), image=opts)
