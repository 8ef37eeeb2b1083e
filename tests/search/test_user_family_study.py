"""A study of a user's own model: the stored teacher and the exported trials decode through the study file's family.

A database may come from another machine, so a family name read from it is never imported: the
teacher a worker loads and the trial ``squeeze export`` checks are decoded with the family built
from the study file the user gave, and exporting by study name alone refuses a user's family.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _user_models import make_net
from squeeze.objectives import load_artifact
import squeeze.search as ss
from squeeze.search._cli import main
from squeeze.search._spec import load_spec
from squeeze.spaces import SqueezeError

STUDY = """
[study]
name = "mine"
storage = "{storage}"
trials = 1
sampler = "random"
seed = 0

[task]
dataset = "digits"
family = "_user_models:make_net"
holdout = 0.3

[task.model]
kwargs = {{ width = 8, blocks = 1 }}
knobs = {{ width = [4, 8] }}

[space]
sparsity = [0.0, 0.5]
bits = [8, 32]

[training]
teacher_epochs = 2
distill_steps = 5
finetune_steps = 2
qat_steps = 2
batch_size = 64

[latency]
runtime = "torch"
repeats = 3
warmup = 1
min_round_ms = 0.5
"""


def test_a_user_family_study_decodes_and_exports_through_its_study_file(tmp_path: Path, capfd) -> None:
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    path = tmp_path / "mine.toml"
    path.write_text(STUDY.format(storage=url), encoding="utf-8")
    ss.run(load_spec(path))  # the teacher's artifact is decoded through the study file's family, twice
    logged: list[str] = []
    ss.run(load_spec(path), log=logged.append)  # and the stored one again, when a run resumes
    assert "loading the stored teacher" in logged
    number = optuna.load_study(study_name="mine", storage=url).get_trials(states=(TrialState.COMPLETE,))[0].number

    out = tmp_path / "trial.squeeze"
    with pytest.raises(SqueezeError, match=r"names the user family '_user_models:make_net'.*give the study file") as info:
        ss.export("mine", trial=number, out=out, storage=url)
    assert f"trial {number} of study 'mine'" in str(info.value) and "\n" not in str(info.value)
    capfd.readouterr()
    assert main(["export", "mine", "--storage", url, "--trial", str(number), "-o", str(out)]) != 0
    err = capfd.readouterr().err
    assert "give the study file" in err and "Traceback" not in err
    assert not out.exists(), "a refused export wrote nothing"

    assert main(["export", str(path), "--trial", str(number), "-o", str(out)]) == 0
    assert load_artifact(out, family=make_net).arch.family == "_user_models:make_net"
    with pytest.raises(SqueezeError, match="pass its factory as `family=`"):
        load_artifact(out)
