"""Secrets: storage passwords never printed or stored, the URL from the environment, no unpickling, no escaping exports."""

from __future__ import annotations

import ast
import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

import squeeze.search as ss
from squeeze.search import _storage, load_spec
from squeeze.search._cli import main

REPO = Path(__file__).resolve().parents[2]
SECRET = f"S3cret-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def pg_study(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny study run through the CLI on PostgreSQL, its URL carrying a password (the server takes any)."""
    from conftest import TINY_STUDY

    folder = tmp_path_factory.mktemp("secrets")
    url = sa.engine.make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    name = f"secrets-{uuid.uuid4().hex[:6]}"
    elsewhere = folder / "not-used.db"
    path = folder / "study.toml"
    path.write_text(TINY_STUDY.format(name=name, storage=f"sqlite:///{elsewhere}", trials=1, references="false"),
                    encoding="utf-8")
    ss.run(load_spec(path, storage=url))  # one trial; the CLI runs a second below
    return {"url": url, "name": name, "path": path, "folder": folder, "elsewhere": elsewhere}


def _cli(capfd, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out + err


def test_passwords_never_printed_nor_stored(pg_study: dict, monkeypatch, capfd) -> None:
    url, name, folder = pg_study["url"], pg_study["name"], pg_study["folder"]
    printed: list[str] = []

    # The URL comes from SQUEEZE_STORAGE, over the study file's own (a SQLite file that must stay unmade).
    monkeypatch.setenv(_storage.STORAGE_ENV, url)
    code, text = _cli(capfd, "run", str(pg_study["path"]), "--trials", "2")
    printed.append(text)
    assert code == 0 and "done: 2/2" in text, text
    assert not pg_study["elsewhere"].exists(), "the environment's URL wins over the study file's"
    assert f"study {name} at " in text and ":***@" in text

    # Every command, with the URL from the environment, then from --storage.
    commands = [
        ["status", name], ["pareto", name, "--all"], ["plot", name, "-o", str(folder / "plots")],
        ["export", name, "--front", "-o", str(folder / "front")], ["studies"], ["worker", str(pg_study["path"])],
    ]
    for argv in commands:
        code, text = _cli(capfd, *argv)
        printed.append(text)
        assert code == 0, (argv, text)
    code, text = _cli(capfd, "studies")
    assert name in text
    monkeypatch.delenv(_storage.STORAGE_ENV)
    for argv in (["status", name, "--storage", url], ["studies", "--storage", url]):
        code, text = _cli(capfd, *argv)
        printed.append(text)
        assert code == 0 and name in text, (argv, text)

    # Failures that quote the URL: a wrong database name, an unreachable port, a missing study.
    wrong_db = sa.engine.make_url(url).set(database="squeeze_no_such_db").render_as_string(hide_password=False)
    closed = sa.engine.make_url(url).set(port=9).render_as_string(hide_password=False)
    for argv in (["status", name, "--storage", wrong_db], ["studies", "--storage", closed],
                 ["status", "no-such-study", "--storage", url], ["--debug", "studies", "--storage", closed]):
        try:
            code, text = _cli(capfd, *argv)
        except Exception as exc:  # --debug lets the exception through: its text must be masked too
            code, text = 2, str(exc) + capfd.readouterr()[1]
        printed.append(text)
        assert code != 0 and ":***@" in text, (argv, text)

    everything = "\n".join(printed)
    assert SECRET not in everything
    # Nor in any file the commands wrote (plots, artifacts) ...
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # ... nor anywhere in the database: the stored config keeps the URL with the password masked.
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                assert SECRET not in repr(tuple(row)), table
    engine.dispose()


def test_export_front_cannot_escape_its_folder(pg_study: dict, tmp_path: Path, capfd) -> None:
    url, name = pg_study["url"], pg_study["name"]
    folder = tmp_path / "front"
    code, text = _cli(capfd, "export", name, "--front", "-o", str(folder), "--storage", url)
    assert code == 0, text
    written = [Path(line.strip()) for line in text.splitlines() if line.strip().endswith(".squeeze")]
    assert written and all(p.resolve().parent == folder.resolve() for p in written)
    assert all(re.fullmatch(r"trial-\d+\.squeeze", p.name) for p in written)

    # A link planted in the folder, named as an export would be, pointing outside: refused, nothing written there.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim"
    for p in written:
        p.unlink()
        p.symlink_to(target)
    code, text = _cli(capfd, "export", name, "--front", "-o", str(folder), "--storage", url)
    assert code == 2 and "escapes the folder" in text, text
    assert not target.exists()
    assert SECRET not in text


def _product_files() -> list[Path]:
    files = []
    for part in ("search", "spaces", "objectives", "benchmarks"):
        files += sorted((REPO / part).rglob("*.py"))
    assert len(files) > 10
    return files


UNSAFE_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
                  ("joblib", "load"), ("marshal", "load"), ("marshal", "loads"), ("cloudpickle", "load"),
                  ("cloudpickle", "loads"), ("shelve", "open")}


def test_nothing_is_unpickled() -> None:
    """``torch.load`` only with ``weights_only=True``; no pickle-family loader at all; ``np.load`` never allows pickles."""
    problems = []
    for path in _product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve") for n in names):
                    problems.append(f"{path}:{node.lineno} imports a pickle-family module")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func in ("torch.load", "torch.serialization.load") or func.endswith(".torch.load"):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{path}:{node.lineno} calls {func} without weights_only=True")
            elif tuple(func.rsplit(".", 1)[-2:]) in UNSAFE_LOADERS:
                problems.append(f"{path}:{node.lineno} calls {func}")
            elif func in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{path}:{node.lineno} calls {func} allowing pickles")
    assert not problems, problems
