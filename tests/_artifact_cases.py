"""Tiny artifacts for the loader's tests, and the means to forge others with a checksum that holds.

A forger can recompute the checksum, so the tests do too: every forged file here is well framed
(signature, header length, checksum) and only its contents lie.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from squeeze.objectives import Arch, encode
from squeeze.objectives._materialize import calibrate, fold_batchnorm, out_channels
from squeeze.spaces import CompressionPlan, ModelFamily

CNN_OPTIONS = {"widths": [4, 8], "depths": [1, 1]}
MIXED = CompressionPlan(bits={"stages.0.0.conv": 4, "stages.1.0.conv": 8, "classifier": 16})


def tiny(family: ModelFamily, options: Mapping[str, Any], plan: CompressionPlan = CompressionPlan(),
         *, num_classes: int = 3, size: int = 8) -> tuple[bytes, torch.nn.Module, torch.Tensor]:
    """An artifact of ``family`` built with ``options`` (checked), its folded float module and some inputs."""
    torch.manual_seed(0)
    options = family.check_options(options)
    model = family.build(options, in_channels=1, num_classes=num_classes).eval()
    folded = fold_batchnorm(model)
    modules = dict(folded.named_modules())
    scales = {n: modules[n].weight.detach().reshape(len(modules[n].weight), -1).abs().amax(1) / (2 ** (b - 1) - 1)
              for n, b in plan.bits.items() if b <= 8}
    x = torch.randn(16, 1, size, size)
    acts = calibrate(folded, dict(plan.bits), scales, example=x[:1], calibration=x)
    arch = Arch(family=family.name, options=options, student={}, in_channels=1, num_classes=num_classes,
                input_size=(size, size), channels=out_channels(model, family.prunable(model)))
    return encode(folded, arch=arch, plan=plan, scales=scales, activations=acts), folded, x


def split(blob: bytes) -> tuple[list[str], bytes]:
    """The three header lines (arch, plan, card) and the payload of a well-framed artifact."""
    (n,) = struct.unpack_from("<I", blob, 4)
    return blob[8 : 8 + n].decode("utf-8").split("\n"), blob[8 + n : -8]


def frame(header: bytes, payload: bytes) -> bytes:
    """Signature, header length, header, payload and a checksum that holds."""
    body = b"SQZ1" + struct.pack("<I", len(header)) + header + payload
    return body + hashlib.sha256(body).digest()[:8]


def forge(blob: bytes, *, arch: Mapping[str, Any] | None = None, plan: Any = None, card: Any = None,
          payload: bytes | None = None) -> bytes:
    """``blob`` with the given header parts (JSON values) or payload replaced, re-framed."""
    lines, old_payload = split(blob)
    for i, value in enumerate((arch, plan, card)):
        if value is not None:
            lines[i] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return frame("\n".join(lines).encode("utf-8"), old_payload if payload is None else payload)


def arch_of(blob: bytes) -> dict[str, Any]:
    """The stored architecture of ``blob``, as a plain dict."""
    return json.loads(split(blob)[0][0])
