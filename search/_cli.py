"""``squeeze``: a thin command line over :mod:`squeeze.search`'s public verbs.

Bad input ends in one sentence on stderr and exit status 2, without a traceback (``--debug``
shows it). Long work shows a progress bar.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from squeeze.spaces import SqueezeError

from ._attrs import TrialAttr

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress neural networks by joint search over pruning, quantization and distillation.")
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
_state = {"debug": False}

StudyArg = Annotated[str, typer.Argument(help="A study file (TOML) or a study name.")]
StorageOpt = Annotated[Optional[str], typer.Option("--storage", help="Storage URL (else $SQUEEZE_STORAGE, else the study file's).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a study-file key: KEY=VALUE, dotted as in the file.")]
TrialsOpt = Annotated[Optional[int], typer.Option("--trials", help="Override study.trials (the global budget of completed trials).")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="Override task.data (a local data folder).")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug



@app.command()
def run(study: StudyArg, trials: TrialsOpt = None, storage: StorageOpt = None, set_: SetOpt = None,
        data: DataOpt = None,
        workers: Annotated[int, typer.Option("--workers", min=1, help="Local worker processes.")] = 1) -> None:
    """Create or resume a study and run it until its budget of completed trials is met."""
    import squeeze.search as ss

    if workers > 1:
        raise typer.Exit(ss.run_workers(study, workers=workers, storage=storage, overrides=set_ or (),
                                        trials=trials, data=data))
    _work(ss.run, study, worker=0, storage=storage, overrides=set_ or (), trials=trials, data=data)


@app.command()
def worker(study: StudyArg, trials: TrialsOpt = None, storage: StorageOpt = None, set_: SetOpt = None,
           data: DataOpt = None,
           worker_id: Annotated[int, typer.Option("--worker-id", min=0, help="Seeds this worker's sampler.")] = 0,
           timing_only: Annotated[bool, typer.Option("--timing-only", help="Only time candidates waiting for the study's latency target (on a machine of that class).")] = False) -> None:
    """Join an existing study from any machine and work on it until its budget is met."""
    import squeeze.search as ss

    _work(ss.work, study, worker=worker_id, storage=storage, overrides=set_ or (), trials=trials, data=data,
          timing_only=timing_only)


def _work(verb, study: str, *, worker: int, storage: str | None, overrides: list[str], trials: int | None,
          data: str | None, timing_only: bool = False) -> None:
    """Run ``verb`` (``run`` or ``work``) with a progress bar that appears once the study has news."""
    import squeeze.search as ss
    from . import _storage as st

    spec = ss.load_spec(study, overrides=overrides, storage=st.resolve_url(storage) or None, trials=trials,
                        data=data) if (study.endswith(".toml") or Path(study).is_file()) else None
    if spec is None:
        raise SqueezeError(f"`squeeze {'run' if verb is ss.run else 'worker'}` needs a study file (*.toml), but got {study!r}.")
    budget = spec.study.trials
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[last]}"), console=err, transient=False)
    task = bar.add_task("trials", total=budget, last="")
    shown = False

    def show() -> None:
        # Shown on the first news only: bad input (a data folder, a URL, a changed study) is found
        # before that and ends in its one sentence, with no header or empty bar in front of it.
        nonlocal shown
        if not shown:
            shown = True
            err.print(f"study [bold]{spec.study.name}[/bold] at {st.safe_url(spec.study.storage)}", highlight=False)
            bar.start()

    def on_trial(counts, frozen) -> None:
        show()
        last = ""
        if frozen is not None and frozen.values:
            acc, size, lat = frozen.values
            last = f"#{frozen.number}: acc {acc:.3f}  {size / 1024:.1f} KB  latency x{lat:.2f}"
        elif frozen is not None and frozen.state.name == "RUNNING":
            last = f"#{frozen.number}: waits to be timed on the latency target"
        elif frozen is not None:
            last = f"#{frozen.number}: failed ({str(frozen.user_attrs.get(TrialAttr.ERROR, ''))[:60]})"
        bar.update(task, completed=counts["COMPLETE"], last=last)

    def log(message: str) -> None:
        show()
        bar.console.print(message, highlight=False)

    try:
        report = verb(spec, worker=worker, log=log, on_trial=on_trial, **({"timing_only": True} if timing_only else {}))
        show()
        bar.update(task, completed=report.budget_completed)
    finally:
        if shown:
            bar.stop()
    if report.interrupted:
        err.print(f"interrupted: {report.budget_completed}/{budget} trials complete; run the same command to resume.")
        raise typer.Exit(130)  # the shell's code for SIGINT, so `squeeze run ... && next` stops here
    if report.waiting_timing:
        err.print(f"stopped: {report.budget_completed}/{budget} trials complete; {report.waiting_timing} trained "
                  f"candidate(s) wait to be timed on the study's latency target (see `squeeze status`); start a worker "
                  f"on a machine of that class.")
        return
    err.print(f"done: {report.budget_completed}/{budget} trials complete ({report.failed} failed here).")


@app.command()
def check(study: StudyArg, storage: StorageOpt = None, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Check what of a study's model can be pruned, quantized and built as students; writes nothing."""
    import squeeze.search as ss
    from rich.progress import SpinnerColumn

    bar = Progress(SpinnerColumn(), TextColumn("check: attempt {task.completed:.0f}, {task.description}"),
                   TimeElapsedColumn(), console=err, transient=True)
    task = bar.add_task("the teacher", total=None)

    def progress(part: str) -> None:
        bar.start()  # once the data is read and the model built: bad input is one sentence, no bar before it
        bar.update(task, advance=1, description=part)

    try:
        result = ss.check(study, storage=storage, overrides=set_ or (), data=data, progress=progress)
    finally:
        bar.stop()
    for removal in result.removals:
        out.print(f"taken out of the space: {removal.describe()}", highlight=False)
    out.print(f"searching: {'; '.join(result.searched)}", highlight=False)
    out.print(f"groups {result.groups_pruned} of {result.groups} prune, layers {result.layers_quantized} of "
              f"{result.layers} quantize, students {result.students_built} of {result.students} build "
              f"({result.attempts} attempts, {result.seconds:.1f} s)", highlight=False)


@app.command()
def status(study: StudyArg, storage: StorageOpt = None) -> None:
    """Trials by state, live workers, retries, front size and hypervolume."""
    import squeeze.search as ss

    s = ss.status(study, storage=storage)
    table = Table(title=f"study {s.name}  ({s.url})")
    table.add_column("what")
    table.add_column("value", justify="right")
    for state, count in s.counts.items():
        table.add_row(f"trials {state.lower()}", str(count))
    table.add_row("budget (completed)", str(s.budget) if s.budget is not None else "?")
    table.add_row("retried trials", str(s.retries))
    table.add_row("live workers", str(s.live_workers))
    table.add_row("front size", str(s.front_size))
    table.add_row("hypervolume", f"{s.hypervolume:.4f}" if s.hypervolume is not None else "-")
    if s.latency_target:
        table.add_row("latency target", s.latency_target)
    table.add_row("waiting to be timed", str(s.waiting_timing))
    if s.timed_elsewhere:
        table.add_row("timed off the target", str(s.timed_elsewhere))
    if s.unsettled:
        table.add_row("timed under load (flagged)", str(s.unsettled))
    if s.runtime:
        table.add_row("runtime", f"{s.runtime} ({'ONNX models' if s.runtime == 'onnxruntime' else 'SQZ1 artifacts'})")
    if s.sampler_ms is not None:
        share = f" ({s.sampler_ms / 10 / s.trial_s:.1f}% of a {s.trial_s:.2f} s trial)" if s.trial_s else ""
        table.add_row("sampler", f"{s.sampler}, {s.sampler_ms:.2f} ms a trial{share}")
    if s.references_beaten:
        beaten = [f"{ref} by {by}" for ref, by in s.references_beaten if by is not None]
        standing = [str(ref) for ref, by in s.references_beaten if by is None]
        table.add_row("references beaten", f"{len(beaten)} of {len(s.references_beaten)}"
                      + (f": trial {', '.join(beaten)}" if beaten else "")
                      + (f"; not beaten: trial {', '.join(standing)}" if standing else ""))
    if s.latency_timed or s.latency_reused:
        table.add_row("latency", f"{s.latency_timed} trials timed, {s.latency_reused} took their network's earlier measurement")
    if s.stopped_early:
        table.add_row("stopped early", f"{s.stopped_early} trials, about {s.saved_s:.0f} s saved")
    if s.teacher:
        table.add_row("teacher", f"acc {s.teacher.accuracy:.4f}, {s.teacher.size_bytes / 1024:.1f} KB, "
                      f"{(s.teacher.latency_ms or 0):.3f} ms")
    out.print(table)
    if s.searched:
        out.print(f"searching: {'; '.join(s.searched)}", highlight=False)
    for line in s.taken_out:
        out.print(f"taken out of the space: {line}", highlight=False)
    for number, error in s.errors:
        out.print(f"trial {number} failed: {error}", highlight=False)


@app.command()
def pareto(study: StudyArg, storage: StorageOpt = None,
           all_: Annotated[bool, typer.Option("--all", help="Show every completed trial, marking the front.")] = False) -> None:
    """Print the Pareto front: accuracy, size, latency, mean bits and sparsity, student."""
    import squeeze.search as ss

    data = ss.front(study, storage=storage)
    done = ss.finished(study, storage=storage)
    front_numbers = {p.number for p in data.front}
    rows = sorted(data.points, key=lambda p: p.size_bytes) if all_ else data.front
    t = data.teacher
    # Finished models are measured on the test split, the proxies on validation: both are shown, named.
    teacher_test = f", test {next(iter(done.values())).teacher_accuracy:.4f}" if done else ""
    table = Table(title=f"Pareto front ({len(data.front)} of {len(data.points)} trials); teacher: acc "
                        f"{t.accuracy:.4f}{teacher_test}, {t.size_bytes / 1024:.1f} KB, {(t.latency_ms or 0):.3f} ms")
    columns = ["trial", "accuracy", *(["finished acc (test)"] if done else []), "size KB", "latency ratio", "latency ms",
               "mean bits", "mean sparsity", "student", "note"]
    for col in columns:
        table.add_column(col, justify="right" if col not in ("student", "note") else "left")
    for p in rows:
        notes = []
        if all_ and p.number in front_numbers:
            notes.append("front")
        if not p.feasible:
            notes.append("infeasible")
        if p.reference:
            notes.append("uniform reference")
        finished_acc = [f"{done[p.number].accuracy:.4f}" if p.number in done else "-"] if done else []
        table.add_row(str(p.number), f"{p.accuracy:.4f}", *finished_acc, f"{p.size_bytes / 1024:.2f}", f"{p.latency_ratio:.3f}",
                      f"{p.latency_ms:.3f}" if p.latency_ms is not None else "-",
                      f"{p.mean_bits:.1f}" if p.mean_bits is not None else "-",
                      f"{p.mean_sparsity:.2f}" if p.mean_sparsity is not None else "-", p.student, ", ".join(notes))
    out.print(table)


@app.command()
def plot(study: StudyArg, storage: StorageOpt = None,
         out_dir: Annotated[Path, typer.Option("-o", "--out", help="Folder for the figures.")] = Path("studies/plots")) -> None:
    """Draw the pairwise projections, a 3-D view and hypervolume over trials (PNG and SVG)."""
    import squeeze.search as ss

    for path in ss.plot(study, out_dir, storage=storage):
        out.print(str(path), highlight=False)


@app.command()
def export(study: StudyArg, storage: StorageOpt = None,
           trial: Annotated[Optional[int], typer.Option("--trial", help="The trial number to export.")] = None,
           front_: Annotated[bool, typer.Option("--front", help="Export every front member.")] = False,
           final: Annotated[bool, typer.Option("--final", help="The finished artifacts (squeeze finalize), the ones to ship.")] = False,
           output: Annotated[Optional[Path], typer.Option("-o", "--output", help="A file (--trial) or a folder (--front).")] = None,
           format_: Annotated[Optional[str], typer.Option("--format", help="onnx or squeeze: must be what the study's runtime stored (onnxruntime: onnx; torch: squeeze).")] = None) -> None:
    """Write deployable artifacts: one trial to a file, or the whole front to a folder."""
    import squeeze.search as ss

    if (trial is None) == (not front_):
        raise SqueezeError("`squeeze export` takes exactly one of --trial N or --front.")
    if output is None:
        raise SqueezeError("`squeeze export` needs -o: a file for --trial, a folder for --front.")
    paths = ([ss.export(study, trial=trial, out=output, storage=storage, final=final, format=format_)] if trial is not None
             else ss.export_front(study, out_dir=output, storage=storage, final=final, format=format_))
    for path in paths:
        out.print(str(path), highlight=False)


@app.command()
def finalize(study: StudyArg, storage: StorageOpt = None, set_: SetOpt = None, data: DataOpt = None,
             trial: Annotated[Optional[list[int]], typer.Option("--trial", help="A trial to finalize (repeat for several).")] = None,
             front_: Annotated[bool, typer.Option("--front", help="Finalize every front member.")] = False,
             epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs of distillation (else finalize.epochs).")] = None) -> None:
    """Train chosen trials' plans to the end, measure them on the test split and store the finished artifacts."""
    import squeeze.search as ss

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=False)
    tasks: dict[int, int] = {}

    def progress(number: int, stage: str, step: int, steps: int) -> None:
        if number not in tasks:
            bar.start()
            tasks[number] = bar.add_task(f"trial {number}: {stage}", total=steps)
        bar.update(tasks[number], completed=step)

    try:
        results = ss.finalize(study, trials=trial or (), front=front_, epochs=epochs, storage=storage,
                              overrides=set_ or (), data=data, progress=progress,
                              log=lambda message: bar.console.print(message, highlight=False))
    finally:
        bar.stop()
    table = Table(title="finished models (accuracy on the test split; proxy: the trial's, on validation)")
    for col in ("trial", "proxy acc", "finished acc", "teacher acc", "size KB", "latency ratio", "latency ms", "epochs"):
        table.add_column(col, justify="right")
    for f in results:
        table.add_row(str(f.trial), f"{f.proxy_accuracy:.4f}", f"{f.accuracy:.4f}", f"{f.teacher_accuracy:.4f}",
                      f"{f.size_bytes / 1024:.2f}", f"{f.latency_ratio:.3f}", f"{f.latency_ms:.3f}", str(f.epochs))
    out.print(table)


@app.command()
def dashboard(study: StudyArg, storage: StorageOpt = None,
              host: Annotated[str, typer.Option("--host", help="Address to serve on; anything but loopback lets other machines read and change the study.")] = "127.0.0.1",
              port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free port).")] = 8080) -> None:
    """Serve optuna-dashboard on the study until Ctrl-C: named objectives, Pareto front, artifacts to download."""
    import squeeze.search as ss
    from ._dashboard import is_loopback

    def ready(url: str) -> None:
        if not is_loopback(host):
            err.print(f"note: serving on {host}: the dashboard has no login, and anyone who can reach this address "
                      "can read and change the study.", highlight=False)
        out.print(f"dashboard: {url}  (Ctrl-C stops it)", highlight=False, soft_wrap=True)

    ss.dashboard(study, storage=storage, host=host, port=port, on_ready=ready)
    err.print("dashboard stopped.")


@app.command()
def studies(storage: StorageOpt = None) -> None:
    """List the studies in a storage."""
    import squeeze.search as ss
    from . import _storage as st

    url = st.resolve_url(storage) or ss.DEFAULT_STORAGE
    table = Table(title=f"studies in {st.safe_url(url)}")
    table.add_column("study")
    table.add_column("completed", justify="right")
    table.add_column("trials", justify="right")
    for name, done, total in ss.list_studies(url):
        table.add_row(name, str(done), str(total))
    out.print(table)


@app.command(name="list")
def list_() -> None:
    """The registered tasks, model families, pruners, quantizers and samplers."""
    from squeeze.objectives import PRUNERS, QUANTIZERS, list_tasks
    from squeeze.spaces import list_families

    from squeeze.search import SAMPLERS

    for title, names in (("tasks", list_tasks()), ("families", list_families()), ("pruners", PRUNERS),
                         ("quantizers", QUANTIZERS), ("samplers", SAMPLERS)):
        out.print(f"{title}: {', '.join(names)}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    import optuna

    # The command line shows its own progress; Optuna's per-trial INFO lines would interleave with it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # Without standalone mode, click returns a `typer.Exit`'s code instead of raising it.
        code = app(args=args, standalone_mode=False)
    except SqueezeError as exc:
        if debug:
            raise
        _print_error(str(exc))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted.")
        return 130
    except typer.Abort:
        return 130
    except typer.TyperException as exc:  # usage errors: a bad flag, a missing argument
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            _print_error(str(exc))
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001
        if debug:
            raise
        _print_error(f"unexpected {type(exc).__name__}: {_redact(str(exc))} (rerun with --debug for the traceback).")
        return 1
    return code if isinstance(code, int) else 0


def _redact(text: str) -> str:
    import re

    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _print_error(message: str) -> None:
    err.print(f"error: {_redact(message)}", highlight=False, markup=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
