"""The latency protocol: teacher and candidate timed side by side, in interleaved rounds, in one process.

The sampler sees a ratio (candidate / teacher), not milliseconds: what slows the machine slows both
models, so a ratio is far steadier than either time. It is *not* portable across kinds of CPU (int8
kernels pay on some instruction sets and not on others), which is why a study has one latency target
(:func:`cpu_class`) and only machines of that class time its candidates (``squeeze.search``).

Load cannot be kept off a shared machine, so the protocol is built to see through it (``docs/latency.md``):

- each model calls itself as often as it takes for *its* round to last ``min_round_ms``, so both
  models' rounds are about equally long and equally likely to be interrupted (with one call count
  for both, a fast candidate's short rounds escaped interruptions that the teacher's long ones took);
- rounds alternate, teacher and candidate back to back in pairs, the order switching every pair;
- on a quiet machine each model's time is the lower decile of its rounds: brief interruptions by
  another process only ever *add* time to a round, so the fastest rounds are those closest to a
  model's own cost;
- the teacher's time is compared with its quiet baseline on the target (``baseline_ms``). Far above
  it (``teacher_drift`` over ``DRIFT``), the machine is shared all through the measurement and no
  round shows a model's own cost: then the ratio is the median of the pairs' ratios, because a pair
  sees one share of the machine, which cancels in its ratio; and the measurement is taken again with
  rounds four times as long (more scheduler slices to average over), up to ``MAX_ATTEMPTS`` times;
- the ratio of the first half of the pairs is compared with that of the second; halves that disagree
  by more than ``HALVES`` also take the measurement again. One that never settles is kept (the
  attempt whose halves agree best) and flagged.

On a 2-core machine under heavy load, with a busy process on the other core, the median of ten
measurements stayed within 6% of the quiet one, where always taking the lower deciles read under half
of it (``benchmarks/README.md``, "Latency under contention").
"""

from __future__ import annotations

import math
import os
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
    target: str | None = None
    """The CPU class that times the study's candidates (:func:`cpu_class`); None: the class of the
    machine that creates the study. Fixed when the study is created."""

    def __post_init__(self) -> None:
        if self.target is not None and (not isinstance(self.target, str) or not self.target.strip()):
            raise SqueezeError(f"`latency.target` must be a CPU class string (see `squeeze status`), but got {self.target!r}.")
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


MAX_ATTEMPTS = 3
"""A measurement taken under load is taken again, at most this many times in all."""
QUANTILE = 0.1
"""Each model's time is this quantile of its rounds (the lower decile)."""
DRIFT = 1.25
"""Load: the teacher's time over its quiet baseline on the target above this factor."""
HALVES = 0.1
"""Load: the ratios of the first and second half of the pairs differing by more than this fraction."""
PROTOCOL = "equal-rounds/2"
LONGER = 4
"""Each attempt after the first has rounds this many times as long as the one before."""
"""The protocol's name, recorded with each measurement (measurements before it read ``lower-decile/1``)."""
CPU_CLASS_ENV = "SQUEEZE_CPU_CLASS"
INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
"""The CPU features that decide which int8 kernels run (x86: AVX2, AVX-512, VNNI, AMX; Arm: dot product, i8mm, SVE)."""


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
    cpu_class: str = ""
    """The class of the CPU it was measured on (:func:`cpu_class`): model name and int8 features."""
    protocol: str = "lower-decile/1"
    """How it was measured: :data:`PROTOCOL` now; ``lower-decile/1`` (one call count for both models, no
    load checks) for measurements stored before."""
    attempts: int = 1
    """Measurements taken: more than one when load was detected."""
    settled: bool = True
    """False when every attempt looked loaded (teacher far from its baseline, or the halves disagreeing)."""
    teacher_drift: float | None = None
    """The teacher's time over its baseline on the target (None: no baseline yet)."""
    halves: float | None = None
    """How far the ratios of the first and second half of the pairs differ (a fraction)."""
    estimate: str = "lower-deciles"
    """``lower-deciles`` (the machine had quiet rounds) or ``median-of-pairs`` (the teacher never came near its baseline)."""

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


def cpu_class() -> str:
    """This machine's CPU class: ``$SQUEEZE_CPU_CLASS`` if set, else the model name and its int8 features.

    Two machines of one class run the same int8 kernels, so their latency ratios compare; the thread
    count, batch and runtime are the study's own settings and complete its latency target.
    """
    override = os.environ.get(CPU_CLASS_ENV, "").strip()
    if override:
        return override
    features: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    features.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = [name for name in INT8_FEATURES if name in features]
    return f"{cpu_model()} [{' '.join(found) or platform.machine()}]"


def _time(model: nn.Module, x: torch.Tensor, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - start) / inner


@torch.inference_mode()
def measure(candidate: nn.Module, teacher: nn.Module, example: torch.Tensor, *, spec: LatencySpec,
            baseline_ms: float | None = None, attempts: int = MAX_ATTEMPTS) -> Latency:
    """Latency ratio of ``candidate`` to ``teacher`` (lower deciles of interleaved rounds of equal length) and its spread.

    ``baseline_ms`` is the teacher's time a call (this protocol's ``teacher_ms``) on this machine's
    class when it was quiet; with it, a measurement whose teacher ran more than ``DRIFT`` times slower
    is taken again, as is one whose two halves disagree by more than ``HALVES``, up to ``attempts``
    times in all.
    """
    if attempts < 1:
        raise ValueError(f"`attempts` must be at least 1, but got {attempts}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        x = example[:1].expand(spec.batch, *example.shape[1:]).contiguous()
        candidate.eval()
        teacher.eval()
        for _ in range(spec.warmup):
            candidate(x)
            teacher(x)
        tried: list[_Attempt] = []
        for k in range(attempts):
            tried.append(_attempt(candidate, teacher, x, spec, baseline_ms, longer=LONGER**k))
            if not tried[-1].loaded:
                break
        settled = not tried[-1].loaded
        # Unsettled: keep the attempt whose halves agree best.
        best = tried[-1] if settled else min(tried, key=lambda a: a.halves)
        return Latency(
            ratio=best.ratio,
            ratio_iqr=best.iqr,
            candidate_ms=best.candidate_s * 1000,
            teacher_ms=best.teacher_s * 1000,
            batch=spec.batch,
            threads=spec.threads,
            repeats=spec.repeats,
            torch_version=torch.__version__,
            cpu=cpu_model(),
            warmup=spec.warmup,
            engine=_engine(spec.runtime),
            runtime=spec.runtime,
            cpu_class=cpu_class(),
            protocol=PROTOCOL,
            attempts=len(tried),
            settled=settled,
            teacher_drift=None if best.drift is None else round(best.drift, 4),
            halves=round(best.halves, 4),
            estimate=best.estimate,
        )
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _Attempt:
    ratio: float
    iqr: float
    candidate_s: float
    teacher_s: float
    drift: float | None
    halves: float
    estimate: str

    @property
    def loaded(self) -> bool:
        return (self.drift is not None and self.drift > DRIFT) or self.halves > HALVES


def _calls(model: nn.Module, x: torch.Tensor, round_s: float) -> int:
    """How many calls of ``model`` fill a round of ``round_s`` seconds (the median of three single calls)."""
    single = max(statistics.median(_time(model, x, 1) for _ in range(3)), 1e-7)
    return max(1, math.ceil(round_s / single))


def _attempt(candidate: nn.Module, teacher: nn.Module, x: torch.Tensor, spec: LatencySpec,
             baseline_ms: float | None, *, longer: int = 1) -> _Attempt:
    """One measurement: the ratio (lower deciles, or the median of the pairs when the machine was shared
    throughout), the pairs' spread, and the two load checks. ``longer`` stretches the rounds."""
    round_s = spec.min_round_ms / 1000 * longer
    inner_t, inner_c = _calls(teacher, x, round_s), _calls(candidate, x, round_s)
    cand, teach = [], []
    for r in range(spec.repeats):
        if r % 2:
            cand.append(_time(candidate, x, inner_c))
            teach.append(_time(teacher, x, inner_t))
        else:
            teach.append(_time(teacher, x, inner_t))
            cand.append(_time(candidate, x, inner_c))
    t_low = _lower(teach)
    drift = t_low * 1000 / baseline_ms if baseline_ms else None
    shared = drift is not None and drift > DRIFT
    # Quiet rounds exist: the fastest are each model's own cost. None do (the teacher never came near its
    # baseline): a pair's two rounds had one share of the machine, which cancels in the pair's ratio.
    estimate = _median_of_pairs if shared else _lower_deciles
    ratios = [c / t for c, t in zip(cand, teach)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    half = len(cand) // 2
    if half >= 2:
        first, second = estimate(cand[:half], teach[:half]), estimate(cand[half:], teach[half:])
        halves = abs(first - second) / min(first, second)
    else:
        halves = 0.0
    return _Attempt(ratio=estimate(cand, teach), iqr=q[2] - q[0], candidate_s=_lower(cand), teacher_s=t_low,
                    drift=drift, halves=halves, estimate="median-of-pairs" if shared else "lower-deciles")


def _lower_deciles(cand: list[float], teach: list[float]) -> float:
    return _lower(cand) / _lower(teach)


def _median_of_pairs(cand: list[float], teach: list[float]) -> float:
    return statistics.median(c / t for c, t in zip(cand, teach))


def _engine(runtime: str) -> str:
    if runtime == "onnxruntime":
        from ._ort import runtime_version

        return runtime_version()
    return _materialize.ENGINE


def _lower(times: list[float]) -> float:
    """The ``QUANTILE`` of ``times`` (nearest rank; the fastest round when there are few)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
