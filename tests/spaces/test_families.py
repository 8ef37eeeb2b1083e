"""Model families on real graphs: torchvision's networks and a user's own factory.

Every registered family (and a ``package.module:factory`` family) builds for small inputs with the
task's channels and classes, keeps the teacher's layer names in every student, and offers one
sparsity parameter per group of coupled channels, never the classifier's outputs.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from squeeze.spaces import JointSpace, SpaceSpec, SqueezeError, discover, get_family, list_families, load_checkpoint

TINY = {
    "cnn": {"widths": [4, 8], "depths": [1, 2]},
    "resnet18": {"widths": [8, 8, 16, 16]},
    "resnet34": {"widths": [8, 8, 8, 16]},
    "mobilenet_v2": {"width": 0.25},
    "mobilenet_v3_small": {"width": 0.25},
    "efficientnet_b0": {"width": 0.25, "depth": 0.5},
}
"""Small teachers of every registered family: the same graphs, few channels."""

USER_FAMILY = "_user_models:make_net"
"""A user's factory (tests/_user_models.py), as a study file names it."""
USER_OPTIONS = {"kwargs": {"width": 8, "blocks": 2}, "knobs": {"width": [4, 8], "blocks": [1, 2]}}


def families() -> list[str]:
    return [*list_families(), USER_FAMILY]


def _options(name: str) -> dict:
    return USER_OPTIONS if name == USER_FAMILY else TINY[name]


def _random_student(family, options, rng: random.Random) -> dict:
    student: dict = {}
    for knob in family.knobs(options, widths=(0.25, 0.5, 1.0)):
        student.setdefault(knob.kind, {})[knob.key] = rng.choice(knob.choices)
    return student


def test_every_registered_family_has_tiny_options() -> None:
    assert set(TINY) == set(list_families())
    assert {"resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"} <= set(list_families())


@pytest.mark.parametrize("name", families())
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_builds_for_small_inputs(name: str, in_channels: int, size: int) -> None:
    family = get_family(name)
    options = family.check_options(_options(name))
    model = family.build(options, in_channels=in_channels, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", families())
def test_students_keep_the_teachers_names_and_groups(name: str) -> None:
    family = get_family(name)
    options = family.check_options(_options(name))
    teacher = family.build(options, in_channels=1, num_classes=10)
    layers = set(family.quantizable(teacher))
    groups = set(family.prunable(teacher))
    assert groups and groups <= layers
    rng = random.Random(0)
    for _ in range(3):
        student_knobs = _random_student(family, options, rng)
        student = family.build(options, in_channels=1, num_classes=10, student=student_knobs)
        assert set(family.quantizable(student)) <= layers, student_knobs
        assert set(family.prunable(student)) <= groups, student_knobs
        with torch.no_grad():
            assert student.eval()(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", families())
def test_the_classifier_outputs_are_never_offered(name: str) -> None:
    family = get_family(name)
    options = family.check_options(_options(name))
    model = family.build(options, in_channels=1, num_classes=10)
    modules = dict(model.named_modules())
    last = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    assert last not in {m for g in discover(model) for m in g.members}
    assert f"sparsity.{last}" not in JointSpace(family, options, SpaceSpec(), teacher=model).parameter_names()


def _groups(name: str) -> dict[str, tuple[str, ...]]:
    family = get_family(name)
    model = family.build(family.check_options(TINY[name]), in_channels=3, num_classes=10)
    return {g.leader: g.members for g in discover(model)}


def test_residual_additions_couple_channels_in_resnet() -> None:
    groups = _groups("resnet18")
    # The stem and every block of layer1 add into one tensor: one group, named after the stem.
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(groups["conv1"])
    assert {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"} <= set(groups["layer2.0.conv2"])
    assert "layer1.0.conv1" in groups and "layer1.0.conv2" not in groups
    assert len(groups) == 4 + 8  # one residual group per stage, one per block's inner convolution


def test_depthwise_convolutions_follow_their_producer() -> None:
    groups = _groups("mobilenet_v2")
    assert "features.2.conv.1.0" in groups["features.2.conv.0.0"]  # depthwise conv in its expansion's group
    assert not any(leader.endswith("conv.1.0") for leader in groups if leader != "features.1.conv.1")
    # A stage's blocks add into one tensor, named after the stage's first projection.
    assert {"features.2.conv.2", "features.3.conv.2"} <= set(groups["features.2.conv.2"])


def test_squeeze_excitation_is_one_group_with_its_block() -> None:
    for name, block in (("mobilenet_v3_small", "features.4.block"), ("efficientnet_b0", "features.2.0.block")):
        groups = _groups(name)
        leader = f"{block}.0.0"
        assert {f"{block}.1.0", f"{block}.2.fc2"} <= set(groups[leader])  # depthwise and the SE's expansion
        assert f"{block}.2.fc1" in groups  # the SE's squeeze is a group of its own


def test_a_narrow_student_keeps_the_teachers_graph() -> None:
    # At a small width torchvision's rounding makes a block's input and output equal, which would
    # add a residual connection (and couple channels) that the teacher does not have.
    family = get_family("efficientnet_b0")
    options = family.check_options({"width": 0.25, "depth": 0.5})
    student = family.build(options, in_channels=1, num_classes=10, student={"width": {"coefficient": 0.5}})
    block = dict(student.named_modules())["features.1.0"]
    assert block.block[-1][0].out_channels == 8 and block.use_res_connect is False
    family = get_family("mobilenet_v3_small")
    options = family.check_options({"width": 0.25})
    teacher = family.build(options, in_channels=1, num_classes=10)
    student = family.build(options, in_channels=1, num_classes=10, student={"width": {"multiplier": 0.5}})
    assert set(family.quantizable(student)) == set(family.quantizable(teacher))


def test_student_depth_keeps_the_first_blocks_under_their_names() -> None:
    family = get_family("mobilenet_v2")
    options = family.check_options({"width": 0.25})
    student = family.build(options, in_channels=1, num_classes=10, student={"depth": {"stage2": 1, "stage3": 2}})
    keys = list(student.features._modules)
    assert keys[:6] == ["0", "1", "2", "3", "4", "7"] and "5" not in keys and keys[-1] == "18"
    family = get_family("resnet34")
    options = family.check_options(TINY["resnet34"])
    student = family.build(options, in_channels=1, num_classes=10, student={"depth": {"layer3": 2}})
    assert len(student.layer3) == 2 and "layer3.1.conv2" in dict(student.named_modules())


# --- checkpoints ------------------------------------------------------------------------------------


def test_a_checkpoint_that_fits_is_loaded(tmp_path: Path) -> None:
    family = get_family("resnet18")
    options = family.check_options(TINY["resnet18"])
    trained = family.build(options, in_channels=1, num_classes=10).eval()
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": trained.state_dict()}, path)
    fresh = load_checkpoint(family.build(options, in_channels=1, num_classes=10), path, family="resnet18").eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(trained(x), fresh(x))


def test_a_checkpoint_that_does_not_fit_names_the_file_and_the_tensor(tmp_path: Path) -> None:
    family = get_family("resnet18")
    options = family.check_options(TINY["resnet18"])
    model = family.build(options, in_channels=1, num_classes=10)
    other = family.build(options, in_channels=1, num_classes=100)
    path = tmp_path / "wrong.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(SqueezeError, match=r"`task\.model\.checkpoint` file `.*wrong\.pt` does not fit .* `fc\.weight` has shape \(100, 16\) in the file but \(10, 16\)"):
        load_checkpoint(model, path, family="resnet18")
    torch.save(get_family("mobilenet_v2").build({"width": 0.25}, in_channels=1, num_classes=10).state_dict(), path)
    with pytest.raises(SqueezeError, match=r"tensors are missing, such as `conv1\.weight`"):
        load_checkpoint(model, path, family="resnet18")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_an_unreadable_checkpoint_is_one_sentence(tmp_path: Path, content: bytes | None) -> None:
    model = get_family("resnet18").build(TINY["resnet18"] | {"blocks": [1, 1, 1, 1]}, in_channels=1, num_classes=10)
    path = tmp_path / "teacher.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SqueezeError, match=r"`task\.model\.checkpoint`.*teacher\.pt.*expected a state dict of \d+ tensors"):
        load_checkpoint(model, path, family="resnet18")


def test_a_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "hook": Path("x")}, path)  # any object that is not a tensor
    with pytest.raises(SqueezeError, match=r"cannot be read with torch\.load\(weights_only=True\)"):
        load_checkpoint(nn.Linear(1, 1), path, family="cnn")


# --- options and user factories -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options", "message"), [
    ("resnet18", {"width": 2}, r"unknown key `task\.model\.width`; the resnet18 family takes"),
    ("resnet18", {"widths": [8, 8]}, r"`task\.model\.widths` must be a list of 4 positive integers"),
    ("resnet34", {"blocks": [3, 0, 6, 3]}, r"`task\.model\.blocks` must be a list of 4 positive integers"),
    ("mobilenet_v2", {"stem": "large"}, r"`task\.model\.stem` must be one of \['small', 'imagenet'\]"),
    ("efficientnet_b0", {"depth": 0}, r"`task\.model\.depth` must be a number in \(0, 4\]"),
    ("mobilenet_v3_small", {"checkpoint": 3}, r"`task\.model\.checkpoint` must be a file path string"),
])
def test_bad_options_name_the_key(name: str, options: dict, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        get_family(name).check_options(options)


def test_the_imagenet_stem_is_torchvisions() -> None:
    family = get_family("resnet18")
    model = family.build(family.check_options({"stem": "imagenet"}), in_channels=3, num_classes=10)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)


def test_user_factory_knobs_build_students() -> None:
    family = get_family(USER_FAMILY)
    options = family.check_options(USER_OPTIONS)
    knobs = family.knobs(options, widths=(1.0,))
    assert [(k.kind, k.key, k.choices) for k in knobs] == [("kwarg", "width", (4, 8)), ("kwarg", "blocks", (1, 2))]
    student = family.build(options, in_channels=3, num_classes=5, student={"kwarg": {"width": 4, "blocks": 1}})
    assert student.head.out_features == 5 and student.stem[0].in_channels == 3 and len(student.blocks) == 1
    # The stem and both blocks add into one tensor: one group, named after the stem.
    assert family.prunable(family.build(options, in_channels=1, num_classes=10)) == ["stem.0"]


@pytest.mark.parametrize(("family", "message"), [
    ("no_such_package.models:make_net", r"`task\.family` = 'no_such_package\.models:make_net' does not import \(ModuleNotFoundError"),
    ("_user_models:missing", r"`task\.family` = '_user_models:missing': module `_user_models` has no attribute `missing`"),
    ("_user_models:NOT_A_FUNCTION", r"is a int, not a function; expected `package\.module:factory`"),
])
def test_a_factory_that_does_not_import_names_the_key(family: str, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        get_family(family)


@pytest.mark.parametrize(("options", "message"), [
    ({"kwargs": {"depth": 2}}, r"`task\.model\.kwargs\.depth` is not a keyword argument of _user_models:make_net"),
    ({"knobs": {"width": []}}, r"`task\.model\.knobs\.width` must be a non-empty list of choices"),
    ({"knobs": {"width": [4, "wide"]}}, r"of one type"),
    ({"kwargs": {"num_classes": 3}}, r"`task\.model\.kwargs\.num_classes` is set from the task's data"),
    ({"layers": 3}, r"unknown key `task\.model\.layers`"),
])
def test_user_factory_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(SqueezeError, match=message):
        get_family(USER_FAMILY).check_options(options)


def test_weights_kept_as_plain_tensors_load_into_a_torchvision_module_that_checks_its_version() -> None:
    # MNASNet refuses a state dict without its format version, which plain tensors (safetensors,
    # the stored teacher, a checkpoint) do not carry: a stored MNASNet teacher could not be loaded again.
    import torchvision
    from safetensors.torch import load, save

    from squeeze.spaces import load_weights

    model = torchvision.models.mnasnet0_5(num_classes=10)
    plain = load(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    fresh = torchvision.models.mnasnet0_5(num_classes=10)
    with pytest.raises(ValueError, match="version"):
        fresh.load_state_dict(plain)
    load_weights(fresh, plain)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
