"""The decoder survives any bytes: random, truncated, bit-flipped and forged files with checksums that hold.

Whatever the bytes, ``decode`` returns a model or raises one SqueezeError sentence: never another
exception, never a hang (an alarm ends an example that runs too long), never an import (no module
appears in ``sys.modules``, no marker of ``_marker_family`` appears), never a huge allocation (the
process's peak memory grows by less than 1 GiB over the whole run).
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _artifact_cases import CNN_OPTIONS, MIXED, forge, frame, split, tiny
from squeeze.objectives import decode
from squeeze.spaces import SqueezeError, get_family

EXAMPLE_S = 60
"""An example that runs this long is a hang (they take well under a second)."""
FUZZ = settings(max_examples=60, deadline=timedelta(seconds=EXAMPLE_S / 2),
                suppress_health_check=[HealthCheck.too_slow])
NAMES = ["cnn", "resnet18", "builtins:open", "os:system", "_marker_family:make", "_user_models:make_net",
         "subprocess:run", "", "x" * 300]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    """A tiny mixed-precision artifact, decoded once so that every module a good load needs is imported."""
    blob = tiny(get_family("cnn"), CNN_OPTIONS, MIXED)[0]
    decode(blob)
    folder = tmp_path_factory.mktemp("markers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQUEEZE_TEST_MARKERS", str(folder))
        sys.modules.pop("_marker_family", None)
        peak = _peak_mib()
        yield blob
        assert not list(folder.iterdir()), "a module a file named was imported or called"
        assert _peak_mib() - peak < 1024, "decoding forged files took more than 1 GiB"


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def hang(*_):
        raise TimeoutError(f"decode ran for {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _survives(blob: bytes) -> None:
    """Decode ``blob``: a model or one SqueezeError sentence, in bounded time, importing nothing."""
    before = set(sys.modules)
    try:
        with _alarm(EXAMPLE_S):
            loaded = decode(blob, source="fuzzed")
    except SqueezeError as exc:
        message = str(exc)
        assert message.startswith("`fuzzed` ") and message.endswith(".") and "\n" not in message, message
    else:
        assert loaded.size_bytes == len(blob)
    assert set(sys.modules) == before, f"decoding imported {sorted(set(sys.modules) - before)}"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(base, data: bytes) -> None:
    _survives(data)
    _survives(b"SQZ1" + data)


@FUZZ
@given(header=st.binary(max_size=600), payload=st.binary(max_size=600))
def test_random_contents_in_a_good_frame(base, header: bytes, payload: bytes) -> None:
    _survives(frame(header, payload))


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**6), reframe=st.booleans())
def test_truncated_files(base, cut: int, reframe: bool) -> None:
    body = base[:-8][: cut % (len(base) - 8)]
    if reframe and len(body) >= 8:
        # Cut inside the payload, with the header length left as it was and a fresh checksum.
        lines, payload = split(base)
        _survives(frame("\n".join(lines).encode(), payload[: cut % max(1, len(payload))]))
    else:
        _survives(body + base[-8:])


@FUZZ
@given(flips=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=8))
def test_bit_flipped_files_with_a_checksum_that_holds(base, flips: list[int]) -> None:
    body = bytearray(base[:-8])
    for f in flips:
        bit = f % (8 * (len(body) - 4)) + 32  # past the signature
        body[bit // 8] ^= 1 << (bit % 8)
    lines_len = int.from_bytes(body[4:8], "little")
    _survives(frame(bytes(body[8 : 8 + lines_len]), bytes(body[8 + lines_len :])) if lines_len < len(body) else bytes(body))


WEIRD = st.recursive(
    st.none() | st.booleans() | st.sampled_from(NAMES)
    | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, -1, 1, 2**31, 10**9, 2**64])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | st.sampled_from(NAMES), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root included)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(value, path: tuple, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _set(copy[path[0]], path[1:], new)
    return copy


@FUZZ
@given(st.data())
def test_forged_header_values(base, data) -> None:
    lines, _ = split(base)
    parts = [json.loads(line) for line in lines]
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="edits")):
        which = data.draw(st.sampled_from([0, 0, 0, 1, 2]), label="line")  # mostly the architecture
        path = data.draw(st.sampled_from(_paths(parts[which])), label="path")
        parts[which] = _set(parts[which], path, data.draw(WEIRD, label="value"))
    arch, plan, card = parts
    _survives(forge(base, arch=arch if isinstance(arch, dict) else {"not": arch}, plan=plan, card=card))


@FUZZ
@given(family=st.sampled_from(NAMES[2:]),
       options=st.dictionaries(st.sampled_from(["kwargs", "knobs", "file", "mode", "args", "widths"]), WEIRD, max_size=3))
def test_forged_family_names_are_never_imported(base, family: str, options) -> None:
    arch = json.loads(split(base)[0][0])
    _survives(forge(base, arch={**arch, "family": family, "options": options}))
