"""What a trial takes in memory, and what this process can still have."""

from __future__ import annotations

import resource

import pytest
from torch import nn

from squeeze.objectives import memory_available, memory_needed, weight_bytes
from squeeze.objectives._memory import COPIES


def test_a_trial_is_counted_in_copies_of_the_weights_and_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4))
    # float32: conv 72 + 8, batch norm 4 x 8 (weight, bias, running mean and variance), linear 32 + 4;
    # and the batch norm's int64 count of batches.
    assert weight_bytes(model) == 4 * (80 + 32 + 36) + 8
    assert memory_needed(model) == COPIES * weight_bytes(model)


def test_an_address_space_limit_lowers_what_is_available() -> None:
    free = memory_available()
    if free is None:
        pytest.skip("this platform has no /proc/meminfo")
    assert free > 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm", encoding="ascii") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    limit = size + 64 * 1024**2
    if hard != resource.RLIM_INFINITY and limit > hard:
        pytest.skip("a tighter address-space limit is already set")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        capped = memory_available()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert capped is not None and capped <= 64 * 1024**2
