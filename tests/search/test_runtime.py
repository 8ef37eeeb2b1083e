"""A study in the ``onnxruntime`` runtime: ONNX models stored, measured, exported byte for byte, and loaded bare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
from optuna.trial import TrialState

from squeeze.objectives import load_task
from squeeze.search import load_spec
from squeeze.search._cli import main


def _cli(capfd, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def test_an_onnxruntime_study_exports_its_front_as_the_measured_onnx_models(tiny_study, tmp_path: Path, capfd) -> None:
    path = tiny_study(name="ort", trials=2)
    ort = ["--set", "latency.runtime=onnxruntime"]
    code, out, err = _cli(capfd, "run", str(path), *ort)
    assert code == 0, out + err
    spec = load_spec(path, overrides=["latency.runtime=onnxruntime"])
    study = optuna.load_study(study_name="ort", storage=spec.study.storage)
    trials = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(trials) == 2 and {t.user_attrs["runtime"] for t in trials.values()} == {"onnxruntime"}
    assert {t.user_attrs["latency"]["engine"].split()[0] for t in trials.values()} == {"onnxruntime"}

    code, out, err = _cli(capfd, "status", "ort", "--storage", spec.study.storage)
    assert code == 0 and "onnxruntime (ONNX models)" in out, out + err

    folder = tmp_path / "front"
    code, out, err = _cli(capfd, "export", str(path), "--front", "--format", "onnx", "-o", str(folder))
    assert code == 0, out + err
    files = sorted(folder.iterdir())
    assert files and all(f.suffix == ".onnx" for f in files)
    data = load_task("digits", options={}, seed=spec.study.seed, holdout=spec.task.holdout, test=spec.task.test,
                     data_dir=None)
    for file in files:
        trial = trials[int(file.stem.removeprefix("trial-"))]
        assert file.stat().st_size == trial.values[1] == trial.user_attrs["size_bytes"]
        session = onnxruntime.InferenceSession(str(file))  # a bare session: default options, nothing of squeeze
        io = json.loads(session.get_modelmeta().custom_metadata_map["squeeze.io"])
        logits = session.run([io["output"]["name"]], {io["input"]["name"]: data.x_holdout.numpy()})[0]
        hits = int((np.argmax(logits, axis=1) == data.y_holdout.numpy()).sum())
        assert abs(hits / len(data.y_holdout) - trial.values[0]) <= 0.001  # the acceptance's 0.1 point

    # The stored bytes are ONNX: asking for the other format is refused in one sentence, nothing written.
    code, out, err = _cli(capfd, "export", str(path), "--trial", str(min(trials)), "--format", "squeeze",
                          "-o", str(tmp_path / "x.squeeze"))
    assert code == 2 and "stored as an ONNX model, not an SQZ1 artifact" in err and not (tmp_path / "x.squeeze").exists()


def test_onnx_export_of_a_torch_study_is_refused_not_converted(tiny_study, tmp_path: Path, capfd) -> None:
    path = tiny_study(name="pt", trials=1)
    code, out, err = _cli(capfd, "run", str(path), "--set", "latency.runtime=torch")
    assert code == 0, out + err
    target = tmp_path / "t.onnx"
    code, out, err = _cli(capfd, "export", str(path), "--trial", "0", "--format", "onnx", "-o", str(target))
    assert code == 2 and not target.exists()
    assert "measured in the torch runtime and stored as an SQZ1 artifact" in err
    code, out, err = _cli(capfd, "export", str(path), "--trial", "0", "--format", "tflite", "-o", str(target))
    assert code == 2 and "`--format` must be one of ['onnx', 'squeeze'], but got 'tflite'" in err


@pytest.mark.parametrize(("stated", "runtime"), [("", "onnxruntime"), ('runtime = "torch"', "torch")])
def test_a_new_study_takes_the_default_runtime_unless_its_file_names_one(tiny_study, stated: str, runtime: str) -> None:
    path = tiny_study(name="r")
    text = path.read_text(encoding="utf-8").replace('runtime = "torch"\n', "").replace("[latency]\n", f"[latency]\n{stated}\n")
    path.write_text(text, encoding="utf-8")
    assert load_spec(path).latency.runtime == runtime
