"""The latency protocol: interleaved rounds of equal length, a ratio of lower deciles with its spread, load
detected and taken again (with real CPU contention: busy processes pinned to the timing core), every setting
recorded. How close the ratio stays under contention is measured in ``benchmarks/latency.py --contention``."""

from __future__ import annotations

import multiprocessing
import os
import re
import time

import pytest
import torch
from torch import nn

from squeeze.objectives import CPU_CLASS_ENV, LatencySpec, cpu_class, cpu_model, measure
from squeeze.objectives._latency import DRIFT
from squeeze.spaces import SqueezeError


class Sleeper(nn.Module):
    """A model whose latency is known: it sleeps, so the test does not depend on the machine's load."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_ratio_of_a_twice_as_slow_model_and_the_recorded_settings() -> None:
    spec = LatencySpec(batch=3, threads=1, warmup=2, repeats=7, min_round_ms=4.0)
    slow, fast = Sleeper(0.004), Sleeper(0.002)
    before = torch.get_num_threads()
    lat = measure(slow, fast, torch.zeros(1, 2), spec=spec)
    assert 1.5 < lat.ratio < 2.5
    assert lat.ratio_iqr >= 0
    assert lat.candidate_ms > lat.teacher_ms > 0
    attrs = lat.attrs()
    assert attrs["batch"] == 3 and attrs["threads"] == 1 and attrs["repeats"] == 7 and attrs["warmup"] == 2
    assert attrs["engine"] == "x86"
    assert attrs["torch_version"] == torch.__version__ and attrs["cpu"] == cpu_model() != ""
    assert attrs["cpu_class"] == cpu_class() and attrs["protocol"] == "equal-rounds/2"
    assert attrs["teacher_drift"] is None  # no baseline given
    assert set(attrs) >= {"ratio", "ratio_iqr", "candidate_ms", "teacher_ms", "attempts", "settled", "halves"}
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    # Each model fills its own round: the faster one makes more calls a round, so its rounds are not shorter.
    assert fast.calls > 1.5 * slow.calls


def test_a_busy_machine_in_most_rounds_does_not_move_the_ratio() -> None:
    # Two equally fast models; in 7 of every 10 calls something else slows the candidate threefold.
    # The ratio of the fastest rounds still reads about 1; a median of per-round ratios would read 3.
    class Busy(Sleeper):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            time.sleep(self.seconds * (3 if self.calls % 10 < 7 else 1))
            return x

    lat = measure(Busy(0.002), Sleeper(0.002), torch.zeros(1, 2),
                  spec=LatencySpec(warmup=0, repeats=40, min_round_ms=0.001))
    assert 0.8 < lat.ratio < 1.25, lat
    assert lat.ratio_iqr > 1  # the spread still says how noisy the rounds were


def test_a_measurement_whose_halves_disagree_is_taken_again() -> None:
    # The candidate turns three times slower halfway through the first attempt (as if a long job
    # started beside it): its two halves disagree, so it is taken again, and a later attempt, slow
    # throughout, settles.
    class Turning(Sleeper):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            time.sleep(self.seconds * (3 if self.calls > 13 else 1))  # 3 calls size its rounds, then 20 rounds
            return x

    lat = measure(Turning(0.002), Sleeper(0.002), torch.zeros(1, 2),
                  spec=LatencySpec(warmup=0, repeats=20, min_round_ms=0.001))
    assert lat.attempts >= 2 and lat.settled, lat
    assert 2.5 < lat.ratio < 3.5, lat


def test_a_teacher_far_slower_than_its_baseline_is_taken_again_and_flagged() -> None:
    model = Sleeper(0.002)
    lat = measure(model, model, torch.zeros(1, 2), spec=LatencySpec(warmup=0, repeats=5, min_round_ms=2.0),
                  baseline_ms=0.2, attempts=2)
    assert lat.attempts == 2 and lat.settled is False
    assert lat.teacher_drift is not None and lat.teacher_drift > 1.25  # the protocol's threshold


def _spin(ready) -> None:
    ready.set()
    while True:
        pass


class Twice(nn.Module):
    """A candidate known to cost twice its teacher: it runs the teacher two times."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.inner(x))


SPINNERS = 4


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity to pin busy processes")
def test_real_contention_on_the_timing_core_is_seen_and_taken_again() -> None:
    # Busy processes pinned to the very core that times leave the timing a fifth of that core or less,
    # so the teacher runs far slower than its quiet baseline whatever else the machine runs: the
    # measurement is taken again and flagged, and the ratio of a candidate that costs twice its teacher
    # stays near 2 (a loose bound: how near, under which load, is benchmarks/latency.py --contention's).
    teacher = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    candidate = Twice(teacher).eval()
    x = torch.randn(1, 256)
    spec = LatencySpec(warmup=2, repeats=8, min_round_ms=10.0)
    mask = os.sched_getaffinity(0)
    core = min(mask)
    os.sched_setaffinity(0, {core})
    busy = []
    try:
        quiet = measure(teacher, teacher, x, spec=spec).teacher_ms
        ctx = multiprocessing.get_context("fork")  # the children only spin: nothing of torch runs in them
        for _ in range(SPINNERS):
            ready = ctx.Event()
            proc = ctx.Process(target=_spin, args=(ready,), daemon=True)
            proc.start()
            busy.append(proc)
            os.sched_setaffinity(proc.pid, {core})
            assert ready.wait(60)
        lat = measure(candidate, teacher, x, spec=spec, baseline_ms=quiet, attempts=2)
    finally:
        for proc in busy:
            proc.kill()
            proc.join()
        os.sched_setaffinity(0, mask)
    assert lat.teacher_drift is not None and lat.teacher_drift > DRIFT, lat
    assert lat.settled is False and lat.attempts == 2, lat
    assert 1.2 < lat.ratio < 4.0, lat


def test_the_cpu_class_names_the_int8_features_and_can_be_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CPU_CLASS_ENV, raising=False)
    detected = cpu_class()
    assert detected.startswith(cpu_model()) and detected.endswith("]")
    monkeypatch.setenv(CPU_CLASS_ENV, "fleet-a")
    assert cpu_class() == "fleet-a"


def test_batch_is_what_the_models_see() -> None:
    seen = []

    class Shape(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return x

    measure(Shape(), Shape(), torch.zeros(5, 1, 4, 4), spec=LatencySpec(batch=32, warmup=0, repeats=2, min_round_ms=0.01))
    assert set(seen) == {(32, 1, 4, 4)}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch", 0, "`latency.batch` must be a positive integer, but got 0."),
        ("threads", 1.5, "`latency.threads` must be a positive integer, but got 1.5."),
        ("repeats", True, "`latency.repeats` must be a positive integer, but got True."),
        ("warmup", -1, "`latency.warmup` must be a non-negative integer, but got -1."),
        ("min_round_ms", 0, "`latency.min_round_ms` must be a positive number, but got 0."),
        ("target", " ", "`latency.target` must be a CPU class string (see `squeeze status`), but got ' '."),
    ],
)
def test_bad_settings_say_the_rule(field: str, value: object, message: str) -> None:
    with pytest.raises(SqueezeError, match=re.escape(message)):
        LatencySpec(**{field: value})
