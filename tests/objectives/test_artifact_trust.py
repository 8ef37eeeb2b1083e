"""Loading an artifact never imports or calls what the file names; a user's family loads when handed over.

The crafted files here have checksums that hold (anyone can recompute one). Whether something was
called or imported is checked by markers: files that the named function, or the named module's
import, would have created.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest
import torch

from _artifact_cases import CNN_OPTIONS, MIXED, arch_of, forge, tiny
from _user_models import make_net
from squeeze.objectives import Arch, decode, encode, load_artifact, size_floor
from squeeze.objectives._materialize import fold_batchnorm, out_channels
from squeeze.spaces import CompressionPlan, SqueezeError, family_named, get_family

USER = "_user_models:make_net"
USER_OPTIONS = {"kwargs": {"width": 6, "blocks": 2}, "knobs": {"width": [4, 6], "blocks": [1, 2]}}
MARKED = "_marker_family:make"


@pytest.fixture(scope="module")
def cnn_blob() -> bytes:
    return tiny(get_family("cnn"), CNN_OPTIONS, MIXED)[0]


def _one_sentence(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), message
    return message


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names imported through importlib (how a family name would be) while the test runs."""
    seen: list[str] = []
    real = importlib.import_module

    def record(name: str, *args, **kwargs):
        seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", record)
    return seen


@pytest.mark.parametrize("shape", ["kwargs", "flat"])  # a user family's options, and the bare keyword arguments
def test_a_file_naming_a_standard_library_function_is_refused_and_nothing_is_called(
        cnn_blob, tmp_path: Path, shape: str, imports: list[str]) -> None:
    marker = tmp_path / "marker"
    options = {"file": str(marker), "mode": "w"}
    options = {"kwargs": options} if shape == "kwargs" else options
    path = tmp_path / "crafted.squeeze"
    path.write_bytes(forge(cnn_blob, arch={**arch_of(cnn_blob), "family": "builtins:open", "options": options}))
    with pytest.raises(SqueezeError) as info:
        load_artifact(path)
    assert not marker.exists(), "loading called the function the file names"
    assert "builtins" not in imports
    message = _one_sentence(info)
    assert str(path) in message and "'builtins:open'" in message and "family=" in message


@pytest.fixture
def marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An artifact of ``_marker_family:make`` and the folder its markers go to; the module is not imported."""
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("SQUEEZE_TEST_MARKERS", str(folder))
    sys.modules.pop("_marker_family", None)
    blob = tiny(get_family(MARKED), {"kwargs": {"width": 4}})[0]
    assert {p.name for p in folder.iterdir()} == {"imported", "called"}  # the markers work
    sys.modules.pop("_marker_family")
    for p in folder.iterdir():
        p.unlink()
    yield blob, folder
    sys.modules.pop("_marker_family", None)


def test_a_file_naming_a_module_is_refused_before_the_import(marked, tmp_path: Path) -> None:
    blob, folder = marked
    path = tmp_path / "from-a-colleague.squeeze"
    path.write_bytes(blob)
    for attempt in (lambda: load_artifact(path), lambda: decode(blob, source="blob"), lambda: decode(blob, allow=("_marker",))):
        with pytest.raises(SqueezeError) as info:
            attempt()
        message = _one_sentence(info)
        assert MARKED in message and "family=" in message and "study file" in message
        assert str(path) in message or "`blob`" in message or "`artifact`" in message
    assert "_marker_family" not in sys.modules and not list(folder.iterdir()), "loading imported the module the file names"


def test_a_module_the_caller_allows_is_imported(marked) -> None:
    blob, folder = marked
    loaded = decode(blob, allow=("_marker_family",))
    assert loaded.arch.family == MARKED and {p.name for p in folder.iterdir()} == {"imported", "called"}


@pytest.fixture(scope="module")
def user_case():
    return tiny(get_family(USER), USER_OPTIONS)


def test_a_user_family_loads_when_its_factory_is_handed_over(user_case, tmp_path: Path) -> None:
    blob, folded, x = user_case
    path = tmp_path / "user.squeeze"
    path.write_bytes(blob)
    with pytest.raises(SqueezeError) as info:
        load_artifact(path)
    assert USER in _one_sentence(info)
    with torch.no_grad():
        want = folded(x)
        for loaded in (load_artifact(path, family=make_net), decode(blob, family=get_family(USER)),
                       decode(blob, allow=("_user_models",))):
            assert torch.allclose(loaded.module(x), want, atol=1e-5, rtol=0)
            assert loaded.arch.family == USER


def test_a_student_of_a_user_family_loads(tmp_path: Path) -> None:
    family = get_family(USER)
    options = family.check_options(USER_OPTIONS)
    student = {"kwarg": {"blocks": 1, "width": 4}}
    model = family.build(options, in_channels=1, num_classes=3, student=student).eval()
    folded = fold_batchnorm(model)
    arch = Arch(family=USER, options=options, student=student, in_channels=1, num_classes=3, input_size=(8, 8),
                channels=out_channels(model, family.prunable(model)))
    blob = encode(folded, arch=arch, plan=CompressionPlan(), scales={}, activations={})
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(decode(blob, family=make_net).module(x), folded(x), atol=1e-5, rtol=0)
    bad = forge(blob, arch={**arch_of(blob), "student": {"kwarg": {"blocks": 7}}})  # not one of the file's choices
    with pytest.raises(SqueezeError, match=r"`student\.kwarg\.blocks` must be one of \[1, 2\], but got 7"):
        decode(bad, family=make_net)


@pytest.mark.parametrize("handed, match", [
    (lambda: get_family("cnn"), r"holds a model of family '_user_models:make_net', but the family handed over is 'cnn'"),
    (lambda: 3, r"`family=` must be a model factory or a ModelFamily, but got a int"),
])
def test_a_wrong_family_is_refused(user_case, handed, match: str) -> None:
    with pytest.raises(SqueezeError, match=match) as info:
        decode(user_case[0], family=handed())
    _one_sentence(info)


def test_a_built_in_family_takes_no_factory(cnn_blob) -> None:
    with pytest.raises(SqueezeError, match=r"built-in family 'cnn', but `family=` hands over the factory") as info:
        decode(cnn_blob, family=make_net)
    _one_sentence(info)
    assert decode(cnn_blob, family=get_family("cnn")).arch.family == "cnn"


def test_rebuilding_and_the_floor_follow_the_same_rule(user_case) -> None:
    blob, folded, _ = user_case
    loaded = decode(blob, family=make_net)
    arch, plan = loaded.arch, loaded.plan
    for call in (lambda **kw: arch.rebuild_float(**kw), lambda **kw: size_floor(arch=arch, plan=plan, card={}, activations=0, **kw)):
        with pytest.raises(SqueezeError, match="pass its factory as `family=`"):
            call()
        assert call(family=make_net) is not None
    rebuilt = arch.rebuild_float(family=make_net)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in folded.state_dict().items()}


def _cnn(blob: bytes, **changes) -> bytes:
    return forge(blob, arch={**arch_of(blob), **changes})


# Each forged header is refused in one sentence, fast: nothing is allocated or built beyond what the file can hold.
FORGED = {
    "huge widths": (lambda b: _cnn(b, options={"widths": [10**9, 10**9], "depths": [1, 1]}), r"beyond the sane bound"),
    "huge depth": (lambda b: _cnn(b, options={"widths": [4, 8], "depths": [60000, 1]}), r"more than \d+ modules and parameters"),
    "negative width": (lambda b: _cnn(b, options={"widths": [-4, 8], "depths": [1, 1]}), r"positive integers"),
    "widths of another type": (lambda b: _cnn(b, options={"widths": "4, 8", "depths": [1, 1]}), r"positive integers"),
    "unknown option": (lambda b: _cnn(b, options={**CNN_OPTIONS, "eval": "print(1)"}), r"unknown key `task\.model\.eval`"),
    "channels of no layer": (lambda b: _cnn(b, channels={"pool": 1}), r"`channels` names 'pool', which is not a layer"),
    "more channels than the layer": (lambda b: _cnn(b, channels={"stages.0.0.conv": 400}), r"has 4 channels to keep from"),
    "huge input": (lambda b: _cnn(b, in_channels=4096, input_size=[4096, 4096]), r"`input_size` must be two positive"),
    "negative classes": (lambda b: _cnn(b, num_classes=-3), r"`num_classes` must be an integer in \[1, "),
    "unknown knob": (lambda b: _cnn(b, student={"width": {"stage9": 0.5}}), r"`student\.width\.stage9` is not a knob"),
    "wide student": (lambda b: _cnn(b, student={"width": {"stage0": 1e300}}), r"multiplier in \(0, 1\]"),
    "unregistered family": (lambda b: _cnn(b, family="os.system"), r"names the model family 'os\.system', which is not registered"),
    "payload too short": (lambda b: forge(b, payload=b"\0" * 40), r"the payload holds 40 bytes, but its architecture lays out"),
    "bits of another type": (lambda b: forge(b, plan={"bits": {"classifier": [8]}}), r"TypeError"),
    "card not a table": (lambda b: forge(b, card=[1, 2]), r"the card must be a table"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_headers_are_refused_fast_in_one_sentence(cnn_blob, case: str) -> None:
    make, match = FORGED[case]
    started = time.perf_counter()
    with pytest.raises(SqueezeError, match=match) as info:
        decode(make(cnn_blob), source="forged")
    assert time.perf_counter() - started < 20
    assert _one_sentence(info).startswith("`forged` ")


class _Offset(torch.nn.Module):
    """A net whose forward holds tensors outside its state dict: a buffer not saved, and a traced constant."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, num_classes)
        self.register_buffer("shift", torch.full((1,), 0.75), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.conv(x) + self.shift).mean((2, 3))) * torch.tensor(3.0)


def offset_net(*, in_channels: int = 1, num_classes: int = 3) -> torch.nn.Module:
    return _Offset(in_channels, num_classes)


def test_tensors_outside_the_state_dict_get_their_values_from_the_family() -> None:
    """Such a network is built for real (not given empty storage), so its constants hold their values."""
    family = family_named("tests:offset_net", source="test", family=offset_net)
    blob, folded, x = tiny(family, {})
    with torch.no_grad():
        assert torch.allclose(decode(blob, family=offset_net).module(x), folded(x), atol=1e-5, rtol=0)
