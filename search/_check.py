"""A study's compressibility check: what it takes out of the space, stored with the study, and fences from failed trials.

When a study is created, its teacher (built from the study's seed, or loaded from its checkpoint) goes
through :func:`squeeze.objectives.check_teacher` before anything is written: each prunable group is
pruned once at the space's largest sparsity, each layer quantized and materialized once, each student
knob choice built. What fails is taken out of the space (:class:`squeeze.spaces.Narrowing`), stored as
the study attribute ``space_check``, and every worker on any machine searches that same space. Only a
study with nothing left to search is refused, in one sentence, before anything is written.

During the search, a failed trial's plan is attempted again untrained (:func:`fence_failure`): the parts
that fail alone are *fenced*, appended to the study attribute ``space_fenced``, and are never proposed
again. The rule is in ``docs/check.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from squeeze.objectives import (CheckReport, DivergedError, TaskData, check_teacher, isolate, memory_available, memory_needed,
                                try_plan, weight_bytes)
from squeeze.spaces import (
    CompressionPlan,
    JointSpace,
    Narrowing,
    Removal,
    SparsityRange,
    SqueezeError,
    checkpoint_of,
    get_family,
    load_checkpoint,
)

from . import _storage as st
from ._attrs import StudyAttr
from ._context import Context, study_exists
from ._spec import StudySpec


NOT_ATTRIBUTED = (DivergedError, FloatingPointError, MemoryError)
"""Failures of training or of the machine: a trial that raises one fences nothing."""


@dataclass(frozen=True)
class SpaceCheck:
    """What a study's check found: each part it took out (with why), what stays searched, and its cost."""

    removals: tuple[Removal, ...]
    searched: tuple[str, ...]
    """What the search still varies, one phrase each (for example ``sparsity of 10 of 12 groups``)."""
    groups: int = 0
    groups_pruned: int = 0
    layers: int = 0
    layers_quantized: int = 0
    students: int = 0
    students_built: int = 0
    attempts: int = 0
    seconds: float = 0.0

    @property
    def narrowing(self) -> Narrowing:
        return Narrowing(self.removals)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _COUNTS}, "removals": [r.to_dict() for r in self.removals],
                "searched": list(self.searched)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpaceCheck:
        return cls(removals=tuple(Removal.from_dict(r) for r in d.get("removals", ())),
                   searched=tuple(d.get("searched", ())), **{k: d.get(k, 0) for k in _COUNTS})


_COUNTS = ("groups", "groups_pruned", "layers", "layers_quantized", "students", "students_built", "attempts",
           "seconds")


def check_teacher_model(spec: StudySpec, data: TaskData) -> torch.nn.Module:
    """The teacher the check runs on: built from the study's seed (as the study's teacher starts), or its checkpoint."""
    family = get_family(spec.task.family)
    torch.manual_seed(spec.study.seed)
    model = family.build(spec.task.model, in_channels=data.in_channels, num_classes=data.num_classes)
    checkpoint = checkpoint_of(spec.task.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, family=spec.task.family)
    return model.eval()


def searched(space: JointSpace) -> list[str]:
    """What ``space`` varies, one phrase per kind of knob; empty when it varies nothing."""
    whole = space.narrowing
    out = []
    sparsity = space.spec.sparsity
    if space.prunable and (sparsity.high > 0 if isinstance(sparsity, SparsityRange) else max(sparsity) > 0):
        found = len(space.prunable) + sum(1 for r in whole.removals if r.parameter.startswith("sparsity."))
        out.append(f"sparsity of {len(space.prunable)} of {found} groups")
    if space.quantizable and any(b != 32 for b in space.spec.bits):
        found = len(space.quantizable) + sum(1 for r in whole.removals if r.parameter.startswith("bits."))
        out.append(f"bit-widths of {len(space.quantizable)} of {found} layers")
    knobs = [k for k in space.knobs if len(k.choices) > 1]
    if knobs:
        out.append("student knobs " + ", ".join(f"{k.kind}.{k.key} ({len(k.choices)} choices)" for k in knobs))
    return out


def run_check(spec: StudySpec, data: TaskData, *, progress: Callable[[str], None] | None = None) -> SpaceCheck:
    """Run the study's check on its teacher; a SqueezeError, one sentence, when nothing can be searched.

    Writes nothing: :func:`record_check` stores the result with the study.
    """
    family = get_family(spec.task.family)
    teacher = check_teacher_model(spec, data)
    refuse_if_too_large(spec, teacher)
    whole = JointSpace(family, spec.task.model, spec.space, teacher=teacher)
    report: CheckReport = check_teacher(teacher, space=whole, data=data, compress=spec.compress,
                                        runtime=spec.latency.runtime, progress=progress)
    name = spec.study.name
    if report.teacher is not None:
        raise SqueezeError(
            f"study {name!r} cannot search model family {spec.task.family!r}: its teacher itself fails at "
            f"{report.teacher.step} ({report.teacher.reason}); every candidate is stored as the teacher is, so give "
            f"a network that torch.fx can trace (no Python branching on tensor values) and that runs on the task's images."
        )
    narrowed = JointSpace(family, spec.task.model, spec.space, teacher=teacher, narrowing=Narrowing(report.removals))
    left = searched(narrowed)
    if not left:
        why = "; ".join(r.describe() for r in report.removals[:3]) or "the space varies nothing"
        raise SqueezeError(
            f"study {name!r} has nothing left to search on model family {spec.task.family!r} ({why}); widen "
            f"`[space]` or give the model student knobs (`task.model.knobs`), and run `squeeze check` to see each part."
        )
    counts = {k: getattr(report, k) for k in _COUNTS}
    return SpaceCheck(removals=report.removals, searched=tuple(left), **counts)


def refuse_if_too_large(spec: StudySpec, teacher: torch.nn.Module) -> None:
    """A SqueezeError, one sentence, when a trial on ``teacher`` would take more memory than this process can have."""
    need, free = memory_needed(teacher), memory_available()
    if free is None or need <= free:
        return
    gb = 1024**3
    raise SqueezeError(
        f"study {spec.study.name!r} cannot search model family {spec.task.family!r} on this machine: a trial on its "
        f"{weight_bytes(teacher) / gb:.1f} GB of weights takes about {need / gb:.0f} GB of memory, but this process "
        f"can have {free / gb:.1f} GB more; run it on a machine with more memory, or give a smaller model."
    )


def report_lines(check: SpaceCheck) -> list[str]:
    """The check in lines: one per part taken out, then what is searched and what the check cost."""
    lines = [f"check: took out {r.describe()}" for r in check.removals]
    lines.append(f"check: searching {'; '.join(check.searched)} ({check.attempts} attempts, {check.seconds:.1f} s)")
    return lines


def _new(spec: StudySpec) -> bool:
    """True when the study is not in its storage yet; asks without creating a database file."""
    url = spec.study.storage
    st.parse_url(url)
    if st.is_sqlite(url) and not st.sqlite_file_exists(url):
        return True
    return not study_exists(url, spec.study.name)


def check_new_study(spec: StudySpec, data: TaskData, *, log: Callable[[str], None] = lambda _: None) -> SpaceCheck | None:
    """The check of a study that does not exist yet, run before anything is written; None when it exists.

    A study that exists keeps the check stored with it (:func:`record_check`), whichever machine ran it.
    """
    if not _new(spec):
        return None
    log("checking what can be pruned, quantized and built as students (once per study)")
    check = run_check(spec, data)
    for line in report_lines(check):
        log(line)
    return check


def stored_check(study: optuna.Study) -> SpaceCheck | None:
    """The check stored with ``study``, or None (a study created before checks existed)."""
    raw = study.user_attrs.get(StudyAttr.SPACE_CHECK)
    return SpaceCheck.from_dict(raw) if isinstance(raw, Mapping) else None


def narrowing_of(attrs: Mapping[str, Any]) -> Narrowing:
    """What a study's user attributes take out of its space: the check's removals, then the fences."""
    check = attrs.get(StudyAttr.SPACE_CHECK)
    removals = Narrowing.from_list((check or {}).get("removals") if isinstance(check, Mapping) else None)
    return removals.with_removals(Narrowing.from_list(attrs.get(StudyAttr.SPACE_FENCED)).removals)


def record_check(ctx: Context, check: SpaceCheck | None, data: TaskData) -> Narrowing:
    """Store ``check`` with the study unless one is stored already (the first worker's stands); the study's narrowing.

    A study with neither a stored check nor any trial (one created before checks were stored) is checked
    now; one with trials keeps the space it was searched over.
    """
    name = ctx.spec.study.name
    if check is None and StudyAttr.SPACE_CHECK not in ctx.study.user_attrs and not ctx.study.get_trials(deepcopy=False):
        check = run_check(ctx.spec, data)
    with st.study_lock(ctx.engine, name):
        ctx.study = optuna.load_study(study_name=name, storage=ctx.storage)
        if check is not None and StudyAttr.SPACE_CHECK not in ctx.study.user_attrs:
            ctx.study.set_user_attr(StudyAttr.SPACE_CHECK, check.to_dict())
        return narrowing_of(ctx.study.user_attrs)


def fence(ctx: Context, removals: list[Removal]) -> Narrowing:
    """Append ``removals`` to the study's fences (under the study lock); the study's narrowing after."""
    name = ctx.spec.study.name
    with st.study_lock(ctx.engine, name):
        study = optuna.load_study(study_name=name, storage=ctx.storage)
        fenced = Narrowing.from_list(study.user_attrs.get(StudyAttr.SPACE_FENCED))
        grown = fenced.with_removals(removals)
        if grown != fenced:
            study.set_user_attr(StudyAttr.SPACE_FENCED, grown.to_list())
        return narrowing_of(study.user_attrs)


def failing_parts(plan: CompressionPlan, *, number: int, attempt_plan: Callable[[CompressionPlan], Any]) -> list[Removal]:
    """The parts of a failed trial's ``plan`` that fail alone when attempted untrained (the rule of ``docs/check.md``).

    The plan is attempted again; when that works, the failure came from training or measuring and
    nothing is attributed. Otherwise its pruned groups (with its student, no bit-widths) are halved down
    to the groups that fail alone; then, when the plan without those groups still fails, its quantized
    layers likewise.
    """
    if attempt_plan(plan) is None:
        return []
    student = {k: dict(v) for k, v in plan.student.items()}
    pruned = [g for g, ratio in plan.sparsity.items() if ratio > 0]
    removals: list[Removal] = []
    if pruned and attempt_plan(CompressionPlan(student=student, sparsity=plan.sparsity)) is not None:
        _, failed = isolate(pruned, lambda part: attempt_plan(
            CompressionPlan(student=student, sparsity={g: plan.sparsity[g] for g in part})))
        removals += [Removal(f"sparsity.{g}", f.step, f.reason, trial=number) for g, f in failed.items()]
    kept = {g: r for g, r in plan.sparsity.items() if f"sparsity.{g}" not in {x.parameter for x in removals}}
    layers = [layer for layer, b in plan.bits.items() if b != 32]
    if layers and attempt_plan(CompressionPlan(student=student, sparsity=kept, bits=plan.bits)) is not None:
        _, failed = isolate(layers, lambda part: attempt_plan(
            CompressionPlan(student=student, sparsity=kept, bits={layer: plan.bits[layer] for layer in part})))
        removals += [Removal(f"bits.{layer}", f.step, f"at {plan.bits[layer]} bits: {f.reason}", trial=number)
                     for layer, f in failed.items()]
    return removals


def fence_failure(ctx: Context, number: int, plan: CompressionPlan, *, teacher: torch.nn.Module, space: JointSpace,
                  data: TaskData) -> list[Removal]:
    """Fence the parts of trial ``number``'s failed ``plan`` that fail alone; returns them (empty: not attributed)."""
    spec = ctx.spec
    removals = failing_parts(plan, number=number, attempt_plan=lambda p: try_plan(
        p, teacher=teacher, space=space, data=data, compress=spec.compress, runtime=spec.latency.runtime))
    if removals:
        fence(ctx, removals)
    return removals



class StudySpace:
    """The study's joint space as its check and fences narrow it, read again before every trial.

    Workers on other machines fence too, so each trial asks the study (one read) and rebuilds the
    space only when the narrowing changed.
    """

    def __init__(self, ctx: Context, *, teacher: torch.nn.Module, data: TaskData) -> None:
        self.ctx, self.teacher, self.data = ctx, teacher, data
        self.family = get_family(ctx.spec.task.family)
        self._spaces: dict[Narrowing, JointSpace] = {}
        self.space: JointSpace | None = None

    def current(self, study: optuna.Study) -> JointSpace:
        """The space for the study's narrowing now."""
        narrowing = narrowing_of(study.user_attrs)
        if narrowing not in self._spaces:
            spec = self.ctx.spec
            self._spaces[narrowing] = JointSpace(self.family, spec.task.model, spec.space, teacher=self.teacher,
                                                 narrowing=narrowing)
        self.space = self._spaces[narrowing]
        return self.space

    def fence_failure(self, number: int, plan: CompressionPlan, error: BaseException | None = None) -> list[Removal]:
        """Fence what trial ``number``'s failed ``plan`` fails on alone; never raises (the trial's own error stands).

        A diverged loss or a machine out of memory (``error``) is a failure of training or of the
        machine, never of a part of the space, and is not attributed.
        """
        if self.space is None or isinstance(error, NOT_ATTRIBUTED):
            return []
        try:
            return fence_failure(self.ctx, number, plan, teacher=self.teacher, space=self.space, data=self.data)
        except Exception:  # noqa: BLE001 - attributing is a courtesy; the trial fails with its own error either way
            return []
