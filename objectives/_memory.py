"""How much memory judging a candidate takes, how much this process can still have, and giving back what one left.

A trial (and each attempt of the study's check) holds several copies of the network at once: the
teacher, the candidate, its folded and quantized forms, the quantizer's wrappers and optimizer state,
the encoded artifact and the model decoded from it. A network too large for the machine is refused
before the first copy is made, in one sentence, rather than ending a worker with the system's
out-of-memory kill or a crash under an address-space limit.
"""

from __future__ import annotations

import gc
import os

from torch import nn

COPIES = 10
"""Copies of a network's weights a trial holds at its peak (an estimate; docs/check.md gives the measurements)."""


def weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_needed(model: nn.Module) -> int:
    """Bytes a trial on ``model`` takes at its peak, besides what the process holds already (:data:`COPIES` copies)."""
    return COPIES * weight_bytes(model)


def memory_available() -> int | None:
    """Bytes this process can still take: the machine's available memory, or less under an address-space limit.

    None where the platform does not say (no ``/proc``).
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip()}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm", encoding="ascii") as f:
                size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            available = min(available, max(0, soft - size))
    except (ImportError, OSError, ValueError):
        pass
    return available


def free_models() -> None:
    """Return the memory of the models a finished trial or check attempt left behind.

    Their modules hold reference cycles (NNI's wrappers, FX graphs and their owners) that Python's
    collector, which counts objects rather than bytes, can leave for many trials: on a large network
    that is gigabytes a worker keeps for nothing. Call it between candidates, not inside one.
    """
    gc.collect()
