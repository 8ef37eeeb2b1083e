"""Seeded, stratified splits and subsamples of a data set's indices."""

from __future__ import annotations

import math

import numpy as np

from squeeze.spaces import SqueezeError


def substream(seed: int, stream: int) -> int:
    """A seed for one use of randomness, independent of the other uses of the same study seed."""
    return int(np.random.default_rng([seed, stream]).integers(2**32))


def split(y: np.ndarray, *, test: int | float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
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
