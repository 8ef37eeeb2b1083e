"""The latency protocol: teacher and candidate timed side by side, interleaved, in one process.

The sampler sees a ratio (candidate / teacher), not milliseconds, so that it is comparable across
workers on different CPUs. Each model's time is the lower decile of its rounds: what another
process does to a round (a busy core beside it, a cache or memory bus shared with it) only ever
adds time, so the fastest rounds are the ones closest to the model's own cost. The two models
alternate round by round, so both see the same stretch of the machine. Measured on this project's
CPU machine with a second study training beside it, the same int8 artifact read 0.60x to 0.74x
over six measurements as a median of per-round ratios, and 0.70x to 0.72x as a ratio of lower
deciles (``benchmarks/search_quality.py``'s setting: 60 rounds of 5 ms). Load that lasts the whole
measurement still moves the ratio: in the same benchmark, one int8 network read 0.95x against its
usual 0.75x in a measurement where both models ran about twice as slow as usual.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from squeeze.spaces import SqueezeError

from . import _materialize


RUNTIMES = ("onnxruntime", "torch")
"""Where a study's candidates run, and so what is stored, measured and exported for each trial.

``torch``: PyTorch modules (``torch.ao`` int8 kernels) in squeeze's ``SQZ1`` artifact; ``onnxruntime``:
one ONNX model per candidate, run by ONNX Runtime's CPU provider (``objectives/_onnx.py``)."""


@dataclass(frozen=True)
class LatencySpec:
    """How latency is measured; recorded with every trial.

    ``runtime`` (one of :data:`RUNTIMES`) is the deployment runtime: the teacher and every
    candidate are stored, timed and scored in it. Here it defaults to ``torch``, the runtime every
    study had before there was a choice; a new study file takes the study default instead
    (``squeeze.search``).
    """

    batch: int = 1
    threads: int = 1
    warmup: int = 5
    repeats: int = 30
    min_round_ms: float = 2.0
    runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise SqueezeError(f"`latency.runtime` must be one of {list(RUNTIMES)}, but got {self.runtime!r}.")
        for key in ("batch", "threads", "repeats"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SqueezeError(f"`latency.{key}` must be a positive integer, but got {value!r}.")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise SqueezeError(f"`latency.warmup` must be a non-negative integer, but got {self.warmup!r}.")
        if isinstance(self.min_round_ms, bool) or not isinstance(self.min_round_ms, (int, float)) or self.min_round_ms <= 0:
            raise SqueezeError(f"`latency.min_round_ms` must be a positive number, but got {self.min_round_ms!r}.")


QUANTILE = 0.1
"""Each model's time is this quantile of its rounds (the lower decile)."""


@dataclass(frozen=True)
class Latency:
    """One side-by-side measurement."""

    ratio: float
    """``candidate_ms / teacher_ms``."""
    ratio_iqr: float
    """Interquartile range of the per-round ratios: how noisy the machine was."""
    candidate_ms: float
    """The lower decile of the candidate's rounds, in milliseconds a call."""
    teacher_ms: float
    batch: int
    threads: int
    repeats: int
    torch_version: str
    cpu: str
    warmup: int = 0
    engine: str = ""
    """PyTorch's quantized CPU engine that int8 layers were built for, or ONNX Runtime's version and provider."""
    runtime: str = "torch"
    """The runtime both models ran in (:data:`RUNTIMES`)."""

    def attrs(self) -> dict[str, object]:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where present)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(model: nn.Module, x: torch.Tensor, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - start) / inner


@torch.inference_mode()
def measure(candidate: nn.Module, teacher: nn.Module, example: torch.Tensor, *, spec: LatencySpec) -> Latency:
    """Latency ratio of ``candidate`` to ``teacher`` (lower deciles of interleaved rounds) and its spread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        x = example[:1].expand(spec.batch, *example.shape[1:]).contiguous()
        candidate.eval()
        teacher.eval()
        for _ in range(spec.warmup):
            candidate(x)
            teacher(x)
        # Each round times enough calls that timer resolution does not matter.
        single = max(_time(teacher, x, 1), _time(candidate, x, 1), 1e-6)
        inner = max(1, int(spec.min_round_ms / 1000 / single))
        ratios, cand, teach = [], [], []
        for r in range(spec.repeats):
            if r % 2:
                c = _time(candidate, x, inner)
                t = _time(teacher, x, inner)
            else:
                t = _time(teacher, x, inner)
                c = _time(candidate, x, inner)
            cand.append(c)
            teach.append(t)
            ratios.append(c / t)
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        c, t = _lower(cand), _lower(teach)
        return Latency(
            ratio=c / t,
            ratio_iqr=q[2] - q[0],
            candidate_ms=c * 1000,
            teacher_ms=t * 1000,
            batch=spec.batch,
            threads=spec.threads,
            repeats=spec.repeats,
            torch_version=torch.__version__,
            cpu=cpu_model(),
            warmup=spec.warmup,
            engine=_engine(spec.runtime),
            runtime=spec.runtime,
        )
    finally:
        torch.set_num_threads(previous)


def _engine(runtime: str) -> str:
    if runtime == "onnxruntime":
        from ._ort import runtime_version

        return runtime_version()
    return _materialize.ENGINE


def _lower(times: list[float]) -> float:
    """The ``QUANTILE`` of ``times`` (nearest rank; the fastest round when there are few)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
