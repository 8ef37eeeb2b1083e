"""Export: a trial's stored artifact written to a file, byte for byte the one measured.

A ``torch`` study stores SQZ1 artifacts, an ``onnxruntime`` study ONNX models; either is written as
it is. ``format="onnx"`` on a ``torch`` study is refused rather than converted: a converted model
would not be the bytes whose accuracy, size and latency the trial recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from optuna.trial import TrialState

from squeeze.objectives import decode, decode_onnx
from squeeze.spaces import SqueezeError, get_family

from . import _storage as st
from ._front import front_of
from ._finalize import final_artifact
from ._target import Target, open_study


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
FORMATS = ("onnx", "squeeze")
"""What an export writes: the ONNX model of an ``onnxruntime`` study, or the SQZ1 artifact of a ``torch`` one."""


def _format_of(blob: bytes) -> str:
    return "squeeze" if bytes(blob[:4]) == b"SQZ1" else "onnx"


def _check_format(blob: bytes, wanted: str | None, *, source: str) -> str:
    """The format of ``blob``; refused in one sentence when ``wanted`` names the other one."""
    if wanted is not None and wanted not in FORMATS:
        raise SqueezeError(f"`--format` must be one of {list(FORMATS)}, but got {wanted!r}.")
    found = _format_of(blob)
    if wanted is None or wanted == found:
        return found
    if wanted == "onnx":
        raise SqueezeError(
            f"{source} was measured in the torch runtime and stored as an SQZ1 artifact, and an ONNX model converted "
            f"from it would not be the bytes that were measured; export it without `--format onnx`, or search with "
            f"`latency.runtime = \"onnxruntime\"` to get ONNX models that were.")
    raise SqueezeError(f"{source} was measured in ONNX Runtime and stored as an ONNX model, not an SQZ1 artifact; "
                       f"export it with `--format onnx` (or without `--format`).")


def export_trial(target: Target, number: int, out: str | Path, *, final: bool = False, format: str | None = None) -> Path:
    """Write trial ``number``'s artifact to ``out``; the bytes its size was measured on (``final``: its finished artifact).

    ``format`` (``onnx`` or ``squeeze``), when given, must be the format the study stored (see the module).
    """
    study, engine = open_study(target)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        held = f"it has trials 0 to {len(trials) - 1}" if trials else "it has no trials yet"
        raise SqueezeError(f"trial {number} does not exist in study {target.name!r} ({held}).")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise SqueezeError(f"trial {number} of study {target.name!r} is {trial.state.name}; only COMPLETE trials can be exported.")
    if final:
        blob, source = final_artifact(target, number), f"the finished trial {number} of study {target.name!r}"
    else:
        row = st.get_artifact(engine, target.name, number)
        if row is None:
            raise SqueezeError(f"trial {number} of study {target.name!r} has no stored artifact.")
        blob, source = row.data, f"trial {number} of study {target.name!r}"
    # With a study file, its family decodes the bytes; with a study name, only a built-in family can:
    # a user's factory is never imported because a database names it (the refusal asks for the file).
    family = get_family(target.spec.task.family) if target.spec is not None else None
    if _check_format(blob, format, source=source) == "onnx":
        decode_onnx(blob, source=source)  # standard operators only, and it loads in ONNX Runtime
    else:
        decode(blob, source=source, family=family)
    return _write(Path(out), blob)


def export_front(target: Target, out_dir: str | Path, *, final: bool = False, format: str | None = None) -> list[Path]:
    """Write every front member's artifact into ``out_dir`` as ``trial-<N>.squeeze``, or ``trial-<N>.onnx`` for an
    ``onnxruntime`` study (``final``: ``trial-<N>-final.squeeze`` or ``.onnx``)."""
    data = front_of(target)
    if final:
        for p in data.front:
            final_artifact(target, p.number)  # every one must exist: refused before anything is written
    folder = Path(out_dir)
    paths = []
    for p in data.front:
        name = _SAFE_NAME.sub("_", f"trial-{p.number}{'-final' if final else ''}.{_suffix(target, p.number, final)}")
        dest = (folder / name).resolve()
        if folder.resolve() not in dest.parents:
            raise SqueezeError(f"export path {dest} escapes the folder {folder}.")
        paths.append(export_trial(target, p.number, dest, final=final, format=format))
    return paths


def _suffix(target: Target, number: int, final: bool) -> str:
    """``onnx`` or ``squeeze``: the file name's ending for what trial ``number`` stored."""
    if final:
        blob = final_artifact(target, number)
    else:
        _, engine = open_study(target)
        row = st.get_artifact(engine, target.name, number)
        blob = row.data if row is not None else b"SQZ1"  # a missing artifact is refused by export_trial
    return _format_of(blob)


def _write(path: Path, blob: bytes) -> Path:
    """Write atomically: a temporary file beside ``path``, then a rename, so nothing is half-written."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise SqueezeError(f"cannot write `{path}`: `{folder}` is a file, not a folder.")
    if path.is_dir():
        raise SqueezeError(f"cannot write `{path}`: it is a folder; name a file, or use --front for a folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as exc:
        raise SqueezeError(f"cannot write `{path}`: {exc.strerror or exc}.") from None
    return path
