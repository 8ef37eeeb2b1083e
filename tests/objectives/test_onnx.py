"""The ``onnxruntime`` runtime on a tiny CNN: QDQ weights on the NNI scales, a file a bare ONNX Runtime runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from squeeze.objectives import (
    CompressSpec,
    LatencySpec,
    OrtModel,
    TrainingBudget,
    decode_onnx,
    deploy,
    evaluate,
    latency_key,
    load_task,
    size_lower_bound,
    teacher_artifact,
    train_teacher,
)
from squeeze.objectives._compress import weight_scales
from squeeze.objectives._materialize import calibrate, fold_batchnorm, to_int8
from squeeze.objectives._onnx import activation_ranges, minmax_qparams, writer
from squeeze.spaces import CompressionPlan, SqueezeError, get_family

BUDGET = TrainingBudget(teacher_epochs=4, distill_steps=10, finetune_steps=5, qat_steps=5)
LATENCY = LatencySpec(repeats=3, warmup=1, min_round_ms=0.5, runtime="onnxruntime")


@pytest.fixture(scope="module")
def setup():
    data = load_task("digits", options={}, seed=0, holdout=0.3, data_dir=None)
    family = get_family("cnn")
    options = family.check_options({"widths": [4, 8], "depths": [1, 1]})
    teacher = family.build(options, in_channels=1, num_classes=10)
    train_teacher(teacher, data.x_train, data.y_train, budget=BUDGET, seed=0)
    teacher.eval()
    blob = teacher_artifact(teacher, family=family, options=options, data=data, runtime="onnxruntime")
    return data, family, options, teacher, blob


def _inits(blob: bytes) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load_from_string(blob).graph.initializer}


def _weight_dq(blob: bytes, layer: str) -> onnx.NodeProto:
    """The DequantizeLinear that gives ``layer``'s weight to its Conv or Gemm (through a Cast for int4 and int2)."""
    nodes = onnx.load_from_string(blob).graph.node
    source = {f"{layer}.weight"} | {n.output[0] for n in nodes if n.op_type == "Cast" and n.input[0] == f"{layer}.weight"}
    (dq,) = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in source]
    return dq


def test_the_teacher_model_is_the_teacher_and_says_what_it_takes(setup) -> None:
    data, _, _, teacher, blob = setup
    model = deploy(blob, runtime="onnxruntime")
    x = data.x_holdout[:32]
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-4)
    loaded = decode_onnx(blob)
    assert loaded.io["input"]["name"] == "input" and loaded.io["input"]["shape"] == ["batch", 1, 8, 8]
    assert loaded.io["output"] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32", "meaning": "class logits"}
    norm = loaded.io["input"]["normalisation"]
    assert norm["mean"] == pytest.approx(list(data.mean)) and norm["std"] == pytest.approx(list(data.std))
    assert all(t.data_type == TensorProto.FLOAT for t in _inits(blob).values() if t.name.endswith(".weight"))


def test_qdq_weights_carry_exactly_the_nni_scales_and_match_the_torch_artifact(setup) -> None:
    data, family, _, teacher, _ = setup
    folded = fold_batchnorm(teacher)
    plan = CompressionPlan(bits={"stages.0.0.conv": 8, "stages.1.0.conv": 4, "classifier": 8})
    example, calibration = data.x_train[:1], data.x_train[:256]
    batches = [(data.x_train[i : i + 64], data.y_train[i : i + 64]) for i in range(0, 256, 64)]
    scales = weight_scales(folded, dict(plan.bits), method="ptq", steps=1, step=None, data=lambda: iter(batches * 2),
                           lr=0.0, example=example)
    blob = writer(folded, plan=plan, scales=scales, calibration=calibration, example=example, io={})()
    inits = _inits(blob)
    state = folded.state_dict()
    for layer, bits in plan.bits.items():
        s = scales[layer].float().numpy()
        dq = _weight_dq(blob, layer)
        assert np.array_equal(numpy_helper.to_array(inits[dq.input[1]]), s)
        assert len(dq.input) == 2 and dq.attribute[0].name == "axis" and dq.attribute[0].i == 0  # symmetric: no zero point
        stored = inits[f"{layer}.weight"]
        assert stored.data_type == (TensorProto.INT4 if bits == 4 else TensorProto.INT8)
        w = state[f"{layer}.weight"].numpy()
        qmax = 2 ** (bits - 1) - 1
        expected = np.clip(np.round(w / s.reshape(-1, *[1] * (w.ndim - 1))), -qmax, qmax)
        assert np.array_equal(numpy_helper.to_array(stored).astype(np.int8), expected.astype(np.int8))
    # The input of each int8 layer is quantized as the torch runtime's calibration quantizes it.
    torch_points = calibrate(folded, dict(plan.bits), scales, example=example, calibration=calibration)
    ranges = activation_ranges(folded, sorted(scales), calibration=calibration)
    assert {minmax_qparams(*ranges[layer]["in"]) for layer in plan.bits} <= set(torch_points.values())
    # And it computes what the torch artifact computes, on inputs inside the calibrated ranges (beyond
    # them ONNX Runtime saturates at 255 where torch.ao clamps at 127). ONNX Runtime keeps the
    # classifier's output in float where torch.ao quantizes it: logits differ by a few of its steps.
    x = calibration
    ours = OrtModel(blob)(x)
    theirs = to_int8(folded, dict(plan.bits), scales, torch_points, example=example)(x)
    step = max(scale for scale, _ in torch_points.values())
    assert (ours - theirs).abs().max() < 3 * step
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() > 0.9


def test_a_plan_in_onnxruntime_is_measured_on_the_file_a_bare_session_runs(setup, tmp_path) -> None:
    data, family, options, teacher, teacher_blob = setup
    plan = CompressionPlan(
        sparsity={"stages.1.0.conv": 0.5},
        bits={"stages.0.0.conv": 4, "stages.1.0.conv": 2, "classifier": 16},
    )
    judged = evaluate(
        plan, teacher=teacher, teacher_deployed=deploy(teacher_blob, runtime="onnxruntime"), family=family,
        options=options, data=data, budget=BUDGET, compress=CompressSpec(), latency=LATENCY, seed=3,
    )
    blob = judged.artifact
    loaded = decode_onnx(blob)
    assert judged.size_bytes == len(blob) == loaded.card["bytes"]
    assert judged.size_bytes > size_lower_bound(plan, family=family, options=options, data=data, compress=CompressSpec())
    assert loaded.plan == plan and judged.latency.runtime == "onnxruntime"
    assert judged.latency.engine.startswith("onnxruntime ")
    inits = _inits(blob)
    assert inits["stages.0.0.conv.weight"].data_type == TensorProto.INT4
    assert inits["stages.1.0.conv.weight"].data_type == TensorProto.INT2
    assert inits["classifier.weight"].data_type == TensorProto.FLOAT16
    assert inits["stages.1.0.conv.weight"].dims[0] == 4  # half of 8 channels removed

    path = tmp_path / "model.onnx"
    path.write_bytes(blob)
    np.save(tmp_path / "x.npy", data.x_holdout.numpy())
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import onnxruntime
        session = onnxruntime.InferenceSession({str(path)!r})
        io = json.loads(session.get_modelmeta().custom_metadata_map["squeeze.io"])
        logits = session.run([io["output"]["name"]], {{io["input"]["name"]: np.load({str(tmp_path / 'x.npy')!r})}})[0]
        np.save({str(tmp_path / 'y.npy')!r}, logits)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("squeeze", "torch"))))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    bare = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert torch.allclose(bare, OrtModel(blob)(data.x_holdout), atol=1e-5)
    assert int((bare.argmax(1) == data.y_holdout).sum()) / len(data.y_holdout) == judged.accuracy


def test_latency_keys_tell_the_runtimes_apart(setup) -> None:
    data, family, options, teacher, _ = setup
    plan = CompressionPlan(bits={"stages.0.0.conv": 8})
    from squeeze.objectives._evaluate import _arch
    from squeeze.objectives._materialize import out_channels

    arch = _arch(plan, family=family, options=options, data=data, channels=out_channels(teacher, family.prunable(teacher)))
    torch_key = latency_key(arch, plan, spec=LatencySpec())
    assert torch_key != latency_key(arch, plan, spec=LATENCY)


def test_only_plain_standard_models_are_run() -> None:
    with pytest.raises(SqueezeError, match=r"^`junk` is not an ONNX model"):
        OrtModel(b"\x00not a model", source="junk")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    custom = helper.make_model(helper.make_graph([helper.make_node("Boom", ["x"], ["y"], domain="evil.ops")], "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("evil.ops", 1)])
    with pytest.raises(SqueezeError, match=r"uses operators of the domain 'evil\.ops'; only standard ONNX operators"):
        OrtModel(custom.SerializeToString(), source="custom")
    weight = numpy_helper.from_array(np.ones(1, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="/etc/passwd")
    external = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight]),
                                 opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(SqueezeError, match=r"keeps tensor 'w' in an external file"):
        OrtModel(external.SerializeToString(), source="external")


def test_the_runtime_is_one_of_two() -> None:
    with pytest.raises(SqueezeError, match=r"`latency.runtime` must be one of \['onnxruntime', 'torch'\], but got 'tensorrt'"):
        LatencySpec(runtime="tensorrt")
    assert LatencySpec().runtime == "torch"
