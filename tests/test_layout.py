"""The code's shape: packages talk through their public faces, and arrows point one way.

- A module of ``squeeze.search``, ``squeeze.spaces`` or ``squeeze.objectives`` imports nothing
  private (a name or module starting with ``_``) from another package.
- The benchmarks import only public names of squeeze.
- ``spaces`` imports neither ``objectives`` nor ``search``; ``objectives`` does not import ``search``.
- Importing squeeze changes no global state: no warning filter, no logger level, no torch hook.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"search": "squeeze.search", "spaces": "squeeze.spaces", "objectives": "squeeze.objectives"}


def _module_name(path: Path) -> str:
    folder = path.relative_to(REPO).parts
    parts = [PACKAGES[folder[0]], *folder[1:-1]]
    if path.stem != "__init__":
        parts.append(path.stem)
    return ".".join(parts)


def _package_of(module: str) -> str:
    """The package a module belongs to: the module itself for a package, else its parent."""
    for name in sorted(set(PACKAGES.values()) | {"squeeze.search.samplers"}, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return module


def _imports(path: Path) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path) if path.relative_to(REPO).parts[0] in PACKAGES else ""
    is_package = path.stem == "__init__"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = here.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield module, alias.name, node.lineno


def _private(module: str, name: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[2:]) or name.startswith("_")


def _package_files() -> list[Path]:
    return sorted(p for folder in PACKAGES for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_a_package_reaches_another_only_through_its_public_face(path: Path) -> None:
    mine = _package_of(_module_name(path))
    for module, name, line in _imports(path):
        if not module.startswith("squeeze."):
            continue
        theirs = _package_of(module)
        if theirs == mine:
            continue
        if mine.startswith(theirs + "."):
            # A subpackage may use public names of its parent's private modules (as Optuna's do), never a private name.
            assert not name.startswith("_"), f"{path.name}:{line} imports the private name {name} from {module}"
            continue
        assert not _private(module, name), f"{path.name}:{line} imports {module}:{name}, private to {theirs}"


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_the_benchmarks_use_only_public_names(path: Path) -> None:
    for module, name, line in _imports(path):
        if module.startswith("squeeze"):
            assert not _private(module, name), f"{path.name}:{line} imports the private {module}:{name}"


def test_the_arrows_point_one_way() -> None:
    allowed = {
        "squeeze.spaces": set(),
        "squeeze.objectives": {"squeeze.spaces"},
        "squeeze.search": {"squeeze.spaces", "squeeze.objectives"},
    }
    for path in _package_files():
        top = _package_of(_module_name(path)).split(".")
        mine = ".".join(top[:2])
        for module, _, line in _imports(path):
            if module.startswith("squeeze.") and not module.startswith(mine):
                theirs = ".".join(module.split(".")[:2])
                assert theirs in allowed[mine], f"{path.relative_to(REPO)}:{line}: {mine} must not import {theirs}"


def test_importing_squeeze_changes_no_global_state() -> None:
    code = """
import logging, warnings
# squeeze's dependencies first: what they set when imported is theirs.
import matplotlib, nni, optuna, sqlalchemy, sympy, torch, torch_pruning, torchvision
import torch.nn.modules.module as m
filters = list(warnings.filters)
levels = {name: logging.getLogger(name).level for name in ("optuna", "nni", "torch")}
hooks = (len(m._global_module_registration_hooks), len(m._global_parameter_registration_hooks))
import squeeze.search, squeeze.objectives, squeeze.spaces, squeeze.search.samplers
assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]
assert {name: logging.getLogger(name).level for name in levels} == levels
assert (len(m._global_module_registration_hooks), len(m._global_parameter_registration_hooks)) == hooks
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
