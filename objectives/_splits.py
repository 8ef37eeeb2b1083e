"""Seeded, stratified splits and subsamples of a data set's indices."""

from __future__ import annotations

import math

import numpy as np

from squeeze.spaces import SqueezeError


def substream(seed: int, stream: int) -> int:
    """A seed for one use of randomness, independent of the other uses of the same study seed."""
    return int(np.random.default_rng([seed, stream]).integers(2**32))


def split(y: np.ndarray, *, test: int | float, seed: int, what: str, key: str = "task.holdout") -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))``; both parts sorted, so file order is kept.

    ``test`` is a fraction or a count, as in scikit-learn's ``train_test_split``; ``key`` is the
    study-file setting that chose it, named when the split cannot be made.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_test = math.ceil(test * n) if isinstance(test, float) else test
    classes, counts = np.unique(y, return_counts=True)
    # Checked here so the user reads which setting to change, not scikit-learn's ValueError.
    if min(n_test, n - n_test) < len(classes):
        raise SqueezeError(
            f"`{key}` must leave at least {len(classes)} samples (one per class) on each side of the "
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


def three_way(y: np.ndarray, *, holdout: float, test: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation and test indices of ``range(len(y))``: disjoint, stratified, seeded, each sorted.

    The test split (``test`` of the samples) is carved first, from a seed of its own, so changing
    ``holdout`` never moves a sample into or out of it; validation is ``holdout`` of the rest.
    """
    rest, tested = split(y, test=test, seed=substream(seed, 3), what=what, key="task.test")
    train, validation = split(y[rest], test=holdout, seed=seed, what=what)
    return rest[train], rest[validation], tested


def subsample(y: np.ndarray, limit: int | None, *, seed: int, what: str) -> np.ndarray:
    """Sorted indices of at most ``limit`` samples, stratified where the class counts allow it."""
    n = len(y)
    if limit is None or limit >= n:
        return np.arange(n)
    classes, counts = np.unique(y, return_counts=True)
    if limit >= len(classes) and n - limit >= len(classes) and counts.min() >= 2:
        kept, _ = split(y, test=n - limit, seed=seed, what=what)
        return kept
    # Too few samples to keep every class in proportion: a plain seeded draw is the honest fallback.
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def subsample_splits(
    y_train: np.ndarray, y_holdout: np.ndarray, y_test: np.ndarray, *,
    limits: tuple[int | None, int | None, int | None], seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each split's kept indices under its limit (``limit``, ``holdout_limit``, ``test_limit``), each from its own seed."""
    return (
        subsample(y_train, limits[0], seed=substream(seed, 1), what="the training part"),
        subsample(y_holdout, limits[1], seed=substream(seed, 2), what="the validation part"),
        subsample(y_test, limits[2], seed=substream(seed, 4), what="the test part"),
    )
