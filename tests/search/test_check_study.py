"""A user's model that does not compress everywhere: the check takes out what fails, the study searches the rest.

Each model in ``tests/_user_models.py`` breaks one step: Torch-Pruning's dependency graph cannot be
built (``make_shuffled``), pruning a group breaks the forward pass and a layer cannot run on int8
kernels (``make_awkward``), a group breaks only at a sparsity the check does not try (``make_even_only``),
or the teacher cannot be traced at all (``make_branching``).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import squeeze.search as ss
from squeeze.search import StudyAttr
from squeeze.search._check import failing_parts
from squeeze.search._cli import main
from squeeze.objectives import StepFailure
from squeeze.spaces import CompressionPlan, SqueezeError

STUDY = """
[study]
name = "{name}"
storage = "{storage}"
trials = {trials}
sampler = "random"
references = false
seed = 0

[task]
dataset = "_user_models:load_data"
family = "_user_models:{factory}"
holdout = 0.3

[task.options]
kwargs = {{ size = 8, n = 40 }}

[task.model]
knobs = {knobs}

[space]
sparsity = {sparsity}
bits = {bits}

[training]
teacher_epochs = 1
distill_steps = 3
finetune_steps = 1
qat_steps = 1
batch_size = 16

[latency]
runtime = "torch"
repeats = 2
warmup = 1
min_round_ms = 0.2
"""


def _study(tmp_path: Path, factory: str, *, trials: int = 2, knobs: str = "{ width = [4, 8] }",
           sparsity: str = "[0.0, 0.5]", bits: str = "[4, 8, 32]") -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'check.db'}"
    path = tmp_path / f"{factory}.toml"
    path.write_text(STUDY.format(name=factory, storage=url, trials=trials, factory=factory, knobs=knobs,
                                 sparsity=sparsity, bits=bits), encoding="utf-8")
    return path, url


def _taken_out(check: ss.SpaceCheck) -> set[tuple[str, str]]:
    return {(r.parameter, r.step) for r in check.removals}


@pytest.mark.parametrize(("factory", "taken_out", "searched"), [
    ("make_net", set(), ["sparsity of 1 of 1 groups", "bit-widths of 4 of 4 layers"]),
    ("make_shuffled", {("sparsity", "graph")}, ["bit-widths of 5 of 5 layers"]),
    ("make_awkward", {("sparsity.a", "run"), ("bits.b", "load")}, ["sparsity of 2 of 3 groups", "bit-widths of 3 of 4 layers"]),
])
def test_the_check_takes_out_each_part_that_fails_and_writes_nothing(tmp_path: Path, factory: str,
                                                                     taken_out: set, searched: list[str]) -> None:
    path, _ = _study(tmp_path, factory, knobs="{}")
    check = ss.check(path)
    assert _taken_out(check) == taken_out
    assert list(check.searched) == searched
    for removal in check.removals:  # the library's own message, on one line
        assert removal.reason and "\n" not in removal.reason and removal.trial is None
    assert not (tmp_path / "check.db").exists(), "`check` writes nothing"


def test_a_study_searches_what_works_and_status_lists_what_was_taken_out(tmp_path: Path, capfd) -> None:
    path, url = _study(tmp_path, "make_awkward")
    ss.run(path)
    study = optuna.load_study(study_name="make_awkward", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and not study.get_trials(states=(TrialState.FAIL,))
    for trial in done:
        assert "sparsity.a" not in trial.params and "bits.b" not in trial.params
        assert "sparsity.b" in trial.params and "bits.a" in trial.params and "student.kwarg.width" in trial.params
    stored = study.user_attrs[StudyAttr.SPACE_CHECK]
    assert {r["parameter"] for r in stored["removals"]} == {"sparsity.a", "bits.b"}

    status = ss.status(path)
    assert len(status.taken_out) == 2 and status.searched
    capfd.readouterr()
    assert main(["status", str(path)]) == 0
    out = capfd.readouterr().out
    assert "taken out of the space: sparsity.a: run failed (check): RuntimeError" in out
    assert "taken out of the space: bits.b: load failed (check): at 4 bits: ValueError" in out


def test_pruning_is_off_when_the_graph_cannot_be_built_and_the_rest_is_searched(tmp_path: Path, capfd) -> None:
    path, url = _study(tmp_path, "make_shuffled")
    logged: list[str] = []
    ss.run(path, log=logged.append)
    assert any("took out pruning (every group): graph failed" in line and "ZeroDivisionError" in line for line in logged)
    study = optuna.load_study(study_name="make_shuffled", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    assert all(not any(p.startswith("sparsity.") for p in t.params) for t in done)
    assert all(any(p.startswith("bits.") for p in t.params) and "student.kwarg.width" in t.params for t in done)
    capfd.readouterr()
    assert main(["status", str(path)]) == 0
    assert "taken out of the space: pruning (every group): graph failed (check)" in capfd.readouterr().out


@pytest.mark.parametrize(("factory", "bits", "knobs", "says"), [
    ("make_shuffled", "[32]", "{}", "has nothing left to search"),
    ("make_branching", "[8, 32]", "{ width = [4, 8] }", "its teacher itself fails at fold (TraceError"),
])
def test_a_study_with_nothing_to_search_is_refused_in_one_sentence_before_anything_is_written(
        tmp_path: Path, capfd, factory: str, bits: str, knobs: str, says: str) -> None:
    path, _ = _study(tmp_path, factory, bits=bits, knobs=knobs)
    with pytest.raises(SqueezeError, match="nothing left to search|cannot search") as info:
        ss.run(path)
    assert says in str(info.value) and "\n" not in str(info.value)
    capfd.readouterr()
    assert main(["run", str(path)]) == 2
    err = capfd.readouterr().err
    assert says in err and "Traceback" not in err
    assert main(["check", str(path)]) == 2
    assert not (tmp_path / "check.db").exists(), "nothing was written"


def test_a_part_that_fails_a_trial_is_fenced_and_never_proposed_again(tmp_path: Path, capfd) -> None:
    # The check prunes `a` at 0.5 (12 -> 6 channels, even): fine. At 0.25 (9 channels) the shuffle breaks.
    path, url = _study(tmp_path, "make_even_only", trials=3, knobs="{}", sparsity="[0.0, 0.25, 0.5]", bits="[8, 32]")
    session = ss.open_session(ss.load_spec(path))
    assert "sparsity.a" in session.space.parameter_names()
    session.study.enqueue_trial({"sparsity.a": 0.25})
    report = session.work()
    assert report.budget_completed == 3 and report.failed == 1
    study = optuna.load_study(study_name="make_even_only", storage=url)
    failed, *later = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and failed.params["sparsity.a"] == 0.25
    fenced = study.user_attrs[StudyAttr.SPACE_FENCED]
    assert [(f["parameter"], f["step"], f["trial"]) for f in fenced] == [("sparsity.a", "run", failed.number)]
    assert all(t.state == TrialState.COMPLETE and "sparsity.a" not in t.params for t in later)
    capfd.readouterr()
    assert main(["status", str(path)]) == 0
    assert f"taken out of the space: sparsity.a: run failed (trial {failed.number}): RuntimeError" in capfd.readouterr().out


def test_a_failure_is_attributed_only_to_the_parts_that_fail_alone() -> None:
    bad = {"g2", "l3"}

    def attempt(plan: CompressionPlan) -> StepFailure | None:
        parts = {g for g, r in plan.sparsity.items() if r > 0} | set(plan.bits)
        return StepFailure("run", "broken") if parts & bad else None

    plan = CompressionPlan(sparsity={"g1": 0.5, "g2": 0.5, "g3": 0.0}, bits={"l1": 8, "l2": 4, "l3": 8})
    removals = failing_parts(plan, number=7, attempt_plan=attempt)
    assert [(r.parameter, r.trial) for r in removals] == [("sparsity.g2", 7), ("bits.l3", 7)]
    assert removals[1].reason == "at 8 bits: broken"
    # A failure the untrained attempt does not reproduce (training diverged, say) fences nothing.
    assert failing_parts(CompressionPlan(sparsity={"g1": 0.5}), number=8, attempt_plan=attempt) == []


def test_check_help_exits_0(capfd) -> None:
    assert main(["check", "--help"]) == 0
    assert "writes nothing" in capfd.readouterr().out


def test_a_diverged_loss_or_a_full_memory_fences_nothing(monkeypatch) -> None:
    from types import SimpleNamespace

    from squeeze.objectives import DivergedError
    from squeeze.search import _check

    attributed: list[int] = []
    monkeypatch.setattr(_check, "fence_failure", lambda ctx, number, plan, **_: attributed.append(number) or [])
    spaces = _check.StudySpace(SimpleNamespace(spec=SimpleNamespace(task=SimpleNamespace(family="cnn"))),
                               teacher=None, data=None)
    spaces.space = object()  # as after the trial's suggestion
    plan = CompressionPlan(sparsity={"a": 0.5})
    for error in (DivergedError("the distillation loss diverged to nan"), FloatingPointError("inf"), MemoryError()):
        assert spaces.fence_failure(1, plan, error) == []
    assert attributed == []
    spaces.fence_failure(2, plan, RuntimeError("INDICES element is out of DATA bounds"))
    assert attributed == [2]


def test_a_network_too_large_for_the_memory_left_is_refused_in_one_sentence(tmp_path: Path, capfd, monkeypatch) -> None:
    from squeeze.search import _check

    path, _ = _study(tmp_path, "make_net")
    # A machine with 1 KB to spare: the check refuses before its first attempt.
    monkeypatch.setattr(_check, "memory_available", lambda: 1024)
    with pytest.raises(SqueezeError, match="on this machine") as info:
        ss.check(path)
    assert "GB of memory" in str(info.value) and "\n" not in str(info.value)
    capfd.readouterr()
    assert main(["run", str(path)]) == 2
    assert "more memory" in capfd.readouterr().err
    assert not (tmp_path / "check.db").exists(), "nothing was written"
    monkeypatch.undo()
    assert ss.check(path).searched, "with the machine's own memory the same study is checked"
