"""torchvision's classification networks outside the shipped families, each as a user's model: every study searches.

A handful run here, on 2-channel 16x16 images (28x28 for SqueezeNet); ``benchmarks/coverage.py`` runs the check over every builder and
two-trial studies over fifteen (grouped convolutions, RegNet's "INDICES element is out of DATA bounds",
transformers). ``studies/torchvision_model.py`` is the family.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import squeeze.search as ss

STUDY = """
[study]
name = "{arch}"
storage = "sqlite:///{db}"
trials = 2
sampler = "random"
references = false
seed = 0

[task]
dataset = "_user_models:load_data"
family = "studies.torchvision_model:make_net"
holdout = 0.3

[task.options]
kwargs = {{ size = {size}, n = 32 }}

[task.model]
kwargs = {{ arch = "{arch}"{kwargs} }}
knobs = {knobs}

[space]
sparsity = [0.0, 0.5]
bits = [8, 32]

[training]
teacher_epochs = 1
distill_steps = 2
finetune_steps = 1
qat_steps = 1
batch_size = 16

[latency]
runtime = "torch"
repeats = 2
warmup = 1
min_round_ms = 0.2
"""


@pytest.mark.parametrize(("arch", "kwargs", "knobs", "searched", "taken_out"), [
    # Squeeze-excitation, depthwise convolutions, hardswish; students at two widths.
    ("mobilenet_v3_small", ", width_mult = 0.25", "{ width_mult = [0.25, 0.5] }",
     ["sparsity of", "bit-widths of", "student knobs kwarg.width_mult"], []),
    # Channel shuffle: Torch-Pruning's graph cannot be built, so pruning is off; bit-widths are searched.
    ("shufflenet_v2_x0_5", "", "{}", ["bit-widths of"], ["pruning (every group): graph failed"]),
    # Fire modules: concatenated branches.
    ("squeezenet1_1", "", "{}", ["sparsity of", "bit-widths of"], []),
])
def test_a_torchvision_network_as_a_user_family_searches_what_it_can(
        tmp_path: Path, arch: str, kwargs: str, knobs: str, searched: list[str], taken_out: list[str]) -> None:
    path = tmp_path / f"{arch}.toml"
    size = 28 if arch == "squeezenet1_1" else 16  # its max-pools need at least 28x28
    path.write_text(STUDY.format(arch=arch, db=tmp_path / "tv.db", kwargs=kwargs, knobs=knobs, size=size), encoding="utf-8")
    report = ss.run(path)
    assert report.budget_completed == 2 and report.failed == 0
    status = ss.status(path)
    for phrase in searched:
        assert any(line.startswith(phrase) for line in status.searched), (phrase, status.searched)
    for phrase in taken_out:
        assert any(phrase in line for line in status.taken_out), (phrase, status.taken_out)
    if not taken_out:
        assert status.taken_out == ()
    study = optuna.load_study(study_name=arch, storage=f"sqlite:///{tmp_path / 'tv.db'}")
    assert all(t.params for t in study.get_trials(states=(TrialState.COMPLETE,)))
