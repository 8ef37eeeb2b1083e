"""A worker process with a cheap objective, for tests and benchmarks about workers, not networks.

    python tests/search/_cheap_worker.py STUDY.toml [--worker N] [--sleep S] [--create]
        [--fail-every K] [--die-at-start N] [--set KEY=VALUE ...] [--mode work|teacher]

``work`` joins the study (``--create`` makes it first) and runs :func:`run_worker` with an
objective that suggests 30 parameters, as the real joint space of the default study does, sleeps
``S`` seconds and returns a formula of them; it prints ``{"start": N}`` as trial N begins (its
parameters written, as the real objective writes them). ``--die-at-start N`` kills the process
(SIGKILL) right then in its N-th trial: a worker that dies between a claim and its first heartbeat.
(From the second trial on: in the first, the parameter names are new to the worker, so each one
is written through at once, whatever the objective does.)
``--timed`` leaves every candidate to be timed on the study's latency target (the objective raises
``AwaitTiming``), and a worker of the target class times them with a formula, after ``--time-sleep``
seconds, printing ``{"timing": N}`` as it starts timing trial N; ``--cpu-class C`` sets this process's
``$SQUEEZE_CPU_CLASS``; ``--timing-only`` only times.
``teacher`` creates-or-loads the study and its teacher (the real ``ensure_teacher``), then exits.
Both print one JSON line on stdout at the end; bad input ends like the CLI: one sentence on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

N_LAYERS = 10  # x 3 parameters (sparsity, bits, an integer knob) = 30, like the default study's space


def cheap_objective(*, sleep_s: float, fail_every: int = 0, die_at_start: int = 0, timed: bool = False):
    """Suggest 30 parameters, sleep, return (accuracy, size, latency ratio) from a formula.

    ``timed``: leave the latency to a worker of the study's target (raise ``AwaitTiming``)."""
    from squeeze.objectives import cpu_class
    from squeeze.search._workers import AwaitTiming, write_params

    started = 0

    def objective(trial):
        nonlocal started
        started += 1
        sparsity = [trial.suggest_float(f"sparsity.layer{i}", 0.0, 0.9, step=0.1) for i in range(N_LAYERS)]
        bits = [trial.suggest_categorical(f"bits.layer{i}", [2, 4, 8, 32]) for i in range(N_LAYERS)]
        width = [trial.suggest_int(f"student.width{i}", 1, 8) for i in range(N_LAYERS)]
        write_params(trial)
        # Tests read this line to act while the trial runs (kill its worker, say).
        print(json.dumps({"start": trial.number}), flush=True)
        if started == die_at_start:
            os.kill(os.getpid(), signal.SIGKILL)
        if fail_every and trial.number % fail_every == fail_every - 1:
            raise ValueError(f"planned failure of trial {trial.number}")
        if sleep_s:
            time.sleep(sleep_s)
        keep = [(1 - s) * w / 8 for s, w in zip(sparsity, width)]
        accuracy = 1 - sum(math.exp(-b / 4) * (1 - k) for b, k in zip(bits, keep)) / N_LAYERS
        size = float(sum(1000 * k * b / 32 for b, k in zip(bits, keep)))
        latency = sum(k * (0.5 if b <= 8 else 1.0) for b, k in zip(bits, keep)) / N_LAYERS
        if timed:
            raise AwaitTiming(f"net-{trial.number}", {"formula": "cheap", "accuracy": accuracy, "size_bytes": size,
                                                      "formula_ratio": latency, "trained_on": cpu_class()})
        return (accuracy, size, latency), {"formula": "cheap"}

    return objective


def cheap_timing(*, sleep_s: float):
    """Timing hooks for ``--timed``: the 'measurement' is the formula's ratio, taken on this machine's class."""
    from squeeze.objectives import cpu_class
    from squeeze.search._timing import TimingHooks

    def measure(frozen, baseline_ms):
        print(json.dumps({"timing": frozen.number}), flush=True)
        if sleep_s:
            time.sleep(sleep_s)
        return {"ratio": frozen.user_attrs["formula_ratio"], "cpu_class": cpu_class(), "baseline_ms": baseline_ms}

    def complete(trial, latency, from_trial):
        trial.set_user_attr("latency", latency)
        return (trial.user_attrs["accuracy"], trial.user_attrs["size_bytes"], latency["ratio"])

    return TimingHooks(measure=measure, complete=complete, baseline=lambda: 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--die-at-start", type=int, default=0, metavar="N")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--mode", choices=("work", "teacher"), default="work")
    parser.add_argument("--timed", action="store_true")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--time-sleep", type=float, default=0.0)
    parser.add_argument("--cpu-class", default=None)
    parser.add_argument("--go", default=None,
                        help="once connected, create FILE.ready-N and wait for FILE to exist before the first trial")
    args = parser.parse_args(argv)
    if args.cpu_class:
        os.environ["SQUEEZE_CPU_CLASS"] = args.cpu_class

    from squeeze.search import load_spec
    from squeeze.search._context import connect
    from squeeze.search._session import run_worker
    from squeeze.search._teacher import ensure_teacher
    from squeeze.spaces import SqueezeError

    try:
        spec = load_spec(args.study, overrides=args.overrides)
        if args.mode == "teacher":
            from squeeze.objectives import load_task

            data = load_task(spec.task.dataset, options=spec.task.options, seed=spec.study.seed,
                             holdout=spec.task.holdout, data_dir=spec.task.data)
            ctx = connect(spec, create=True)
            said: list[str] = []
            teacher = ensure_teacher(ctx, data, log=said.append)
            print(json.dumps({"sha256": teacher.sha256, "trained": any("training" in s for s in said)}), flush=True)
            return 0
        ctx = connect(spec, create=args.create)
        if args.go:
            _wait_for_go(args.go, args.worker)
        started = time.perf_counter()
        timer = None
        if args.timed or args.timing_only:
            from squeeze.search._timing import Timer

            timer = Timer(ctx, cheap_timing(sleep_s=args.time_sleep), target=ctx.target)
        report = run_worker(ctx, cheap_objective(sleep_s=args.sleep, fail_every=args.fail_every,
                                                    die_at_start=args.die_at_start, timed=args.timed),
                            worker=args.worker, timer=timer, timing_only=args.timing_only)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"worker": args.worker, "completed": report.completed, "failed": report.failed,
                      "budget_completed": report.budget_completed, "interrupted": report.interrupted,
                      "waiting_timing": report.waiting_timing,
                      "seconds": round(time.perf_counter() - started, 3)}), flush=True)
    return 0


def _wait_for_go(go: str, worker: int) -> None:
    """Line workers up, so a benchmark times them working together rather than their start-up."""
    from pathlib import Path

    Path(f"{go}.ready-{worker}").touch()
    while not Path(go).exists():
        time.sleep(0.01)


def child(argv: list[str], output: str) -> None:
    """Entry point for a forked worker (tests start them from a preloaded fork server, which skips
    importing torch afresh each time): stdout and stderr go to ``output``."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(main(argv))


if __name__ == "__main__":
    sys.exit(main())
