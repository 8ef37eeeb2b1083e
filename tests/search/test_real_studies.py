"""Studies on real models and real data, from the command line, to the end.

ResNet-18 on the real MNIST files (the shipped example study, shrunk by ``--set``), a study on a
CIFAR-10 folder in torchvision's layout written here from generated images, a teacher from a
checkpoint, and the bad inputs of this part: a checkpoint that does not fit, a folder in the wrong
layout, a ``package.module:function`` that does not import.
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from _data_folders import accept_generated_cifar, write_cifar10
from conftest import REPO
from squeeze.objectives import load_artifact
from squeeze.search import _teacher_store
from squeeze.search._cli import main
from squeeze.spaces import get_family

TINY_RUN = [
    "--set", "study.references=false", "--set", "study.sampler=random",
    "--set", "training.teacher_epochs=1", "--set", "training.distill_steps=2", "--set", "training.finetune_steps=1",
    "--set", "training.qat_steps=1", "--set", "training.batch_size=16",
    "--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "latency.min_round_ms=0.2",
]
"""Overrides that make any study tiny: what is checked is that it runs to the end."""

CIFAR_STUDY = """
[study]
name = "{name}"
storage = "sqlite:///{db}"
trials = 2

[task]
dataset = "cifar10"
data = "{data}"
family = "{family}"
device = "cuda"

[task.options]
input_size = 16
mean = [0.49, 0.48, 0.45]
std = [0.25, 0.24, 0.26]

[task.model]
{model}

[space]
sparsity = [0.0, 0.5]
bits = [8, 32]
width = [0.5, 1.0]
"""


@pytest.fixture(autouse=True)
def _generated_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision reads only the published CIFAR files (it checks their MD5); these are generated.
    accept_generated_cifar(monkeypatch)


def _cli(capfd, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _complete(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return study.get_trials(states=(TrialState.COMPLETE,))


def _cifar_study(tmp_path: Path, *, name: str = "cifar", family: str = "mobilenet_v3_small",
                 model: str = "width = 0.25", data: Path | None = None) -> Path:
    if data is None:
        data = write_cifar10(tmp_path / "data", per_batch=12)
    path = tmp_path / f"{name}.toml"
    path.write_text(CIFAR_STUDY.format(name=name, db=tmp_path / "studies.db", data=data, family=family, model=model),
                    encoding="utf-8")
    return path


def test_resnet18_on_real_mnist_runs_to_the_end(tmp_path: Path, capfd, mnist_dir: Path) -> None:
    db = tmp_path / "mnist.db"
    code, out, err = _cli(
        capfd, "run", str(REPO / "studies" / "resnet18_mnist.toml"), "--data", str(mnist_dir), "--trials", "2",
        "--storage", f"sqlite:///{db}", *TINY_RUN,
        "--set", "task.options.limit=160", "--set", "task.options.holdout_limit=80", "--set", "task.options.input_size=16",
        "--set", "task.model.widths=[8, 8, 16, 16]", "--set", "latency.runtime=torch",
    )
    assert code == 0, out + err
    trials = _complete(db, "resnet18_mnist")
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["latency_device"] == "cpu"
        assert set(t.user_attrs["plan"]["sparsity"]) <= set(get_family("resnet18").prunable(
            get_family("resnet18").build({"widths": [8, 8, 16, 16], "blocks": [2, 2, 2, 2]}, in_channels=1, num_classes=10)))
    target = tmp_path / "best.squeeze"
    code, out, err = _cli(capfd, "export", "resnet18_mnist", "--storage", f"sqlite:///{db}", "--trial",
                          str(trials[0].number), "-o", str(target))
    assert code == 0, out + err
    loaded = load_artifact(target)
    assert loaded.arch.family == "resnet18" and loaded.module(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


def test_a_study_on_a_cifar_folder_runs_to_the_end(tmp_path: Path, capfd) -> None:
    path = _cifar_study(tmp_path)
    code, out, err = _cli(capfd, "run", str(path), *TINY_RUN)
    assert code == 0, out + err
    trials = _complete(tmp_path / "studies.db", "cifar")
    assert len(trials) == 2
    # Asked for cuda: it trains there when a GPU is present, and says where it really ran.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert {t.user_attrs["device"] for t in trials} == {expected}


def test_a_teacher_from_a_checkpoint_is_not_trained(tmp_path: Path, capfd) -> None:
    from safetensors.torch import load

    family = get_family("resnet18")
    options = family.check_options({"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]})
    trained = family.build(options, in_channels=3, num_classes=10)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(trained.state_dict(), checkpoint)
    model = f'widths = [8, 8, 8, 8]\nblocks = [1, 1, 1, 1]\ncheckpoint = "{checkpoint}"'
    path = _cifar_study(tmp_path, name="ckpt", family="resnet18", model=model)
    # 500 teacher epochs would take minutes: the run is quick only because the teacher is loaded.
    code, out, err = _cli(capfd, "run", str(path), *TINY_RUN, "--set", "training.teacher_epochs=500", "--trials", "1")
    assert code == 0, out + err
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'studies.db'}")
    try:
        row = _teacher_store.get_teacher(engine, "ckpt")
    finally:
        engine.dispose()
    stored = load(row.weights)
    assert all(torch.equal(stored[k], v) for k, v in trained.state_dict().items())
    study = optuna.load_study(study_name="ckpt", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert {"teacher_accuracy", "teacher_bytes", "teacher_latency_ms"} <= set(study.user_attrs)


def _bad_checkpoint(tmp_path: Path) -> tuple[list[str], str]:
    checkpoint = tmp_path / "other.pt"
    torch.save(get_family("resnet18").build({"widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}, in_channels=3,
                                            num_classes=100).state_dict(), checkpoint)
    model = f'widths = [8, 8, 8, 8]\nblocks = [1, 1, 1, 1]\ncheckpoint = "{checkpoint}"'
    path = _cifar_study(tmp_path, family="resnet18", model=model)
    return ["run", str(path)], r"`task\.model\.checkpoint` file `.*other\.pt` does not fit .*`fc\.weight` has shape \(100, 8\)"


def _wrong_layout(tmp_path: Path) -> tuple[list[str], str]:
    folder = tmp_path / "pictures"
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    (folder / "cifar-10-batches-py" / "readme.txt").write_text("batches went elsewhere")
    path = _cifar_study(tmp_path, data=folder)
    return ["run", str(path)], r"`.*pictures` \(`task\.data`\) is not in torchvision's layout: a folder `cifar-10-batches-py` .*; `data_batch_1` is missing"


def _family_does_not_import(tmp_path: Path) -> tuple[list[str], str]:
    path = _cifar_study(tmp_path, family="no_such_package.models:make_net", model="")
    return ["run", str(path)], r"`task\.family` = 'no_such_package\.models:make_net' does not import \(ModuleNotFoundError.*expected `package\.module:factory`"


def _dataset_does_not_import(tmp_path: Path) -> tuple[list[str], str]:
    path = _cifar_study(tmp_path)
    path.write_text(path.read_text().replace('dataset = "cifar10"', 'dataset = "no_such_package.data:load"'))
    return ["run", str(path)], r"`task\.dataset` = 'no_such_package\.data:load' does not import .*expected `package\.module:function`"


@pytest.mark.parametrize("case", [_bad_checkpoint, _wrong_layout, _family_does_not_import, _dataset_does_not_import],
                         ids=lambda c: c.__name__.strip("_"))
def test_bad_input_is_one_sentence_naming_the_file_or_key(case, tmp_path: Path, capfd) -> None:
    argv, expect = case(tmp_path)
    code, out, err = _cli(capfd, *argv)
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip() == errors[0] and not out.strip(), out + err
    sentence = errors[0][len("error: "):]
    assert sentence.endswith(".") and re.search(expect, sentence), sentence
    assert not (tmp_path / "studies.db").exists()  # nothing was written


def test_every_shipped_study_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from squeeze.search import load_spec
    from squeeze.spaces import list_families

    monkeypatch.chdir(REPO)  # the examples name paths and modules from the repository root
    specs = [load_spec(p) for p in sorted((REPO / "studies").glob("*.toml"))]
    assert set(list_families()) - {"cnn"} <= {s.task.family for s in specs}  # one example per family
    assert any(":" in s.task.family for s in specs)


def test_the_user_model_example_runs_to_the_end(tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch,
                                                mnist_dir: Path) -> None:
    monkeypatch.chdir(REPO)
    db = tmp_path / "custom.db"
    code, out, err = _cli(
        capfd, "run", "studies/custom_mnist.toml", "--data", str(mnist_dir), "--trials", "2",
        "--storage", f"sqlite:///{db}",
        *TINY_RUN, "--set", "task.options.limit=120", "--set", "task.options.holdout_limit=60",
        "--set", "task.options.input_size=12", "--set", "task.model.kwargs={ width = 8, blocks = 2 }",
        "--set", "task.model.knobs={ width = [4, 8], blocks = [1, 2] }",
    )
    assert code == 0, out + err
    trials = _complete(db, "custom_mnist")
    assert len(trials) == 2 and all("kwarg" in t.user_attrs["plan"]["student"] for t in trials)
