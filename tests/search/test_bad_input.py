"""Bad input over the command line: one sentence, a non-zero exit, no traceback, nothing written.

Every case is named after the input it tries. Each runs ``squeeze`` (in this process, through
``main``) against a database that already holds a study, counts the rows of every table before
and after, and checks the single ``error:`` line names the file or key and what was expected.
"""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from squeeze.objectives import load_artifact
import squeeze.search as ss
from squeeze.search import _storage, load_spec
from squeeze.search._cli import main
from squeeze.spaces import SqueezeError

SECRET = "Pa55-word-never-printed"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SQLite database holding study ``seeded``: its teacher, one COMPLETE and one FAIL trial."""
    from conftest import TINY_STUDY

    folder = tmp_path_factory.mktemp("seeded")
    url = f"sqlite:///{folder / 'seeded.db'}"
    path = folder / "seeded.toml"
    path.write_text(TINY_STUDY.format(name="seeded", storage=url, trials=1, references="false"), encoding="utf-8")
    ss.run(load_spec(path))
    study = optuna.load_study(study_name="seeded", storage=url)
    failed = study.ask()
    failed.set_user_attr("error", "RuntimeError: made to fail for the export case")
    study.tell(failed, state=TrialState.FAIL)
    complete = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))]
    return {"url": url, "path": path, "folder": folder, "complete": complete[0], "failed": failed.number}


def _counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        return _storage.row_counts(engine)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the case table


@dataclass
class Env:
    """What a case builds its command line from."""

    tmp: Path
    url: str
    seeded: dict
    make_study: Callable[..., Path]
    pg: Callable[[], str]  # the test database's URL; skips, or fails under SQUEEZE_REQUIRE_POSTGRES=1, without one
    watch: list[str] = field(default_factory=list)  # further storage URLs whose rows must not change

    def study(self, *, replace: dict[str, str] | None = None, extra: str = "", name: str = "fresh",
              storage: str | None = None) -> str:
        path = self.make_study(name=name, storage=storage or self.url, trials=2, extra=extra)
        text = path.read_text(encoding="utf-8")
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new, 1)
        path.write_text(text, encoding="utf-8")
        return str(path)


def _idx(path: Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0, gz: bool = False) -> None:
    magic = 0x0800 + array.ndim if magic is None else magic
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut]
    if gz:
        whole = gzip.compress(raw)
        path.with_name(path.name + ".gz").write_bytes(whole[: len(whole) // 2] if cut < 0 else whole)
    else:
        path.write_bytes(raw)


def _mnist(env: Env, *, images_magic: int | None = None, cut: int = 0, gz: bool = False) -> list[str]:
    folder = env.tmp / "idx"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(40, 6, 6))
    _idx(folder / "train-images-idx3-ubyte", images, magic=images_magic, cut=cut, gz=gz)
    _idx(folder / "train-labels-idx1-ubyte", np.arange(40) % 10)
    return ["run", env.study(replace={'dataset = "digits"': f'dataset = "mnist"\ndata = "{folder}"'})]


def _pg(env: Env, **parts: str) -> str:
    url = env.pg()
    env.watch.append(url)
    return sa.engine.make_url(url).set(**parts).render_as_string(hide_password=False)


def _broken_factory(env: Env) -> list[str]:
    # A family whose factory raises, registered for real, in a process of its own so the
    # registry of this test process stays as it is.
    path = env.study(replace={'family = "cnn"': 'family = "exploding"'})
    code = textwrap.dedent(f"""
        import sys
        from squeeze.spaces import get_family, register_family
        cnn = get_family("cnn")

        @register_family("exploding")
        class Exploding:
            name = "exploding"
            def check_options(self, options): return cnn.check_options(options)
            def build(self, *args, **kwargs): raise RuntimeError("the factory exploded")
            def knobs(self, *args, **kwargs): return cnn.knobs(*args, **kwargs)
            def prunable(self, model): return cnn.prunable(model)
            def quantizable(self, model): return cnn.quantizable(model)

        from squeeze.search._cli import main
        sys.exit(main(["run", {path!r}]))
    """)
    return ["--python", code]


def _checkpoint(env: Env) -> list[str]:
    # A real state dict, of a wider teacher than the study's `task.model` describes.
    import torch

    from squeeze.spaces import get_family

    path = env.tmp / "wider.pt"
    torch.save(get_family("cnn").build({"widths": [16, 16], "depths": [1, 1]}, in_channels=1, num_classes=10)
               .state_dict(), path)
    return ["run", env.study(replace={"depths = [1, 1]": f'depths = [1, 1]\ncheckpoint = "{path}"'})]


def _export(env: Env, trial: str | int, out: str | None = None) -> list[str]:
    return ["export", "seeded", "--storage", env.url, "--trial", str(trial), "-o", out or str(env.tmp / "out.squeeze")]


def _blocked_path(env: Env) -> str:
    (env.tmp / "a-file").write_text("not a folder")
    return str(env.tmp / "a-file" / "out.squeeze")


# (id, argv builder, what the one sentence must match)
CASES: list[tuple[str, Callable[[Env], list[str]], str]] = [
    ("malformed-toml", lambda e: ["run", e.study(replace={"[study]": "[study"})], r"fresh\.toml` is not valid TOML"),
    ("missing-study-file", lambda e: ["run", str(e.tmp / "nope.toml")], r"nope\.toml` does not exist"),
    ("unknown-table", lambda e: ["run", e.study(extra="[bogus]\nx = 1\n")], r"unknown table `bogus` in .*fresh\.toml"),
    ("unknown-study-key", lambda e: ["run", e.study(replace={"seed = 0": "seed = 0\ntrails = 3"})],
     r"unknown key `study\.trails` in .*fresh\.toml; `study` takes"),
    ("unknown-training-key", lambda e: ["run", e.study(replace={"batch_size = 64": "batch_size = 64\nepochs = 3"})],
     r"unknown key `training\.epochs`"),
    ("unknown-task-model-key", lambda e: ["run", e.study(replace={"depths = [1, 1]": "depths = [1, 1]\nwdths = [4]"})],
     r"unknown key `task\.model\.wdths`; the cnn family takes"),
    ("unknown-task-option", lambda e: ["run", e.study(extra="[task.options]\nlimit = 5\n")],
     r"`task\.options\.limit` is not an option of task 'digits'"),
    ("wrong-type-trials-string", lambda e: ["run", e.study(replace={"trials = 2": 'trials = "2"'})],
     r"`study\.trials` must be a positive integer, but got '2'"),
    ("wrong-type-bits-scalar", lambda e: ["run", e.study(replace={"bits = [4, 8, 32]": "bits = 4"})],
     r"`space\.bits` must be a list of choices, but got 4"),
    ("wrong-type-holdout-string", lambda e: ["run", e.study(replace={"holdout = 0.3": 'holdout = "most"'})],
     r"`task\.holdout` must be a number in \(0, 1\)"),
    ("wrong-type-references-int", lambda e: ["run", e.study(replace={"references = false": "references = 1"})],
     r"`study\.references` must be true or false"),
    ("wrong-type-model-widths", lambda e: ["run", e.study(replace={"widths = [8, 16]": 'widths = ["8", 16]'})],
     r"`task\.model\.widths` must be a non-empty list of positive integers"),
    ("wrong-type-set-override", lambda e: ["run", e.study(), "--set", "study.trials=abc"],
     r"`study\.trials` must be a positive integer, but got 'abc'"),
    ("sparsity-choice-1.0", lambda e: ["run", e.study(replace={"sparsity = [0.0, 0.5]": "sparsity = [0.0, 1.0]"})],
     r"`space\.sparsity` choices must be numbers in \[0, 1\), but got 1\.0"),
    ("sparsity-choice-negative", lambda e: ["run", e.study(replace={"sparsity = [0.0, 0.5]": "sparsity = [-0.25]"})],
     r"`space\.sparsity` choices must be numbers in \[0, 1\)"),
    ("sparsity-range-high-1.0", lambda e: ["run", e.study(replace={"sparsity = [0.0, 0.5]": "sparsity = {low = 0.0, high = 1.0}"})],
     r"`space\.sparsity` range must satisfy 0 <= low <= high < 1"),
    ("sparsity-range-step-nan", lambda e: ["run", e.study(replace={"sparsity = [0.0, 0.5]": "sparsity = {low = 0.0, high = 0.5, step = nan}"})],
     r"`space\.sparsity\.step` in .*fresh\.toml must be a finite number"),
    ("sparsity-empty", lambda e: ["run", e.study(replace={"sparsity = [0.0, 0.5]": "sparsity = []"})],
     r"`space\.sparsity` must list at least one choice"),
    ("bits-1", lambda e: ["run", e.study(replace={"bits = [4, 8, 32]": "bits = [1, 8]"})],
     r"`space\.bits` choices must be in \{2\.\.8, 16, 32\}, but got 1"),
    ("bits-9", lambda e: ["run", e.study(replace={"bits = [4, 8, 32]": "bits = [9]"})], r"`space\.bits` choices must be in .*got 9"),
    ("bits-64", lambda e: ["run", e.study(replace={"bits = [4, 8, 32]": "bits = [64]"})], r"`space\.bits` choices must be in .*got 64"),
    ("bits-empty", lambda e: ["run", e.study(replace={"bits = [4, 8, 32]": "bits = []"})],
     r"`space\.bits` must list at least one bit-width"),
    ("width-empty", lambda e: ["run", e.study(replace={"width = [0.5, 1.0]": "width = []"})],
     r"`space\.width` must list at least one multiplier"),
    ("width-above-1", lambda e: ["run", e.study(replace={"width = [0.5, 1.0]": "width = [1.5]"})],
     r"`space\.width` multipliers must be in \(0, 1\]"),
    ("trials-0", lambda e: ["run", e.study(replace={"trials = 2": "trials = 0"})], r"`study\.trials` must be a positive integer, but got 0"),
    ("trials-0-flag", lambda e: ["run", e.study(), "--trials", "0"], r"`study\.trials` must be a positive integer, but got 0"),
    ("learning-rate-inf", lambda e: ["run", e.study(replace={"batch_size = 64": "batch_size = 64\nlr = inf"})],
     r"`training\.lr` in .*fresh\.toml must be a finite number"),
    ("unknown-sampler", lambda e: ["run", e.study(replace={'sampler = "random"': 'sampler = "annealing"'})],
     r"`study\.sampler` must be one of"),
    ("unknown-pruner", lambda e: ["run", e.study(extra="[compress]\npruner = \"magic\"\n")], r"`compress\.pruner` must be one of"),
    ("mnist-missing-data-folder", lambda e: ["run", e.study(replace={'dataset = "digits"': f'dataset = "mnist"\ndata = "{e.tmp / "no-such-folder"}"'})],
     r"`task\.data` must be a folder of IDX files for task 'mnist', but `.*no-such-folder` is not a folder"),
    ("mnist-no-data-key", lambda e: ["run", e.study(replace={'dataset = "digits"': 'dataset = "mnist"'})],
     r"`task\.data` must name a folder of IDX files"),
    ("mnist-idx-wrong-magic", lambda e: _mnist(e, images_magic=2049),
     r"train-images-idx3-ubyte` is not an IDX image file: magic number 2049, expected 2051"),
    ("mnist-idx-truncated-body", lambda e: _mnist(e, cut=100),
     r"train-images-idx3-ubyte` is truncated or padded: its header \(40, 6, 6\) promises 1440 bytes"),
    ("mnist-idx-truncated-gzip", lambda e: _mnist(e, cut=-1, gz=True),
     r"train-images-idx3-ubyte\.gz` could not be read as a gzip file"),
    ("model-factory-raises", _broken_factory, r"model family 'exploding' cannot build a teacher from `task\.model`.*the factory exploded"),
    ("checkpoint-does-not-fit", _checkpoint,
     r"`task\.model\.checkpoint` file `.*wider\.pt` does not fit the teacher that `task\.model` describes: "
     r"`stages\.0\.0\.conv\.weight` has shape \(16, 1, 3, 3\) in the file"),
    ("storage-malformed-url", lambda e: ["run", e.study(storage="not a url")], r"`study\.storage` must be a database URL"),
    ("storage-unsupported-backend", lambda e: ["run", e.study(storage=f"mysql://user:{SECRET}@db.example/x")],
     r"`study\.storage` must use sqlite or postgresql, but got 'mysql'"),
    ("storage-sqlite-path-is-a-folder", lambda e: ["run", e.study(storage=f"sqlite:///{e.tmp}")], r"cannot connect to the storage 'sqlite:///.*'"),
    ("storage-unreachable-server", lambda e: ["run", e.study(storage=f"postgresql+psycopg://root:{SECRET}@127.0.0.1:9/test")],
     r"cannot connect to the storage 'postgresql\+psycopg://root:\*\*\*@127\.0\.0\.1:9/test'"),
    ("storage-wrong-credentials", lambda e: ["run", e.study(storage=_pg(e, username="squeeze_no_such_role", password=SECRET))],
     r"cannot connect to the storage 'postgresql\+psycopg://squeeze_no_such_role:\*\*\*@.*squeeze_no_such_role"),
    ("storage-flag-malformed", lambda e: ["status", "seeded", "--storage", f"postgresql+psycopg://root:{SECRET}@[::1"],
     r"`study\.storage` must be a database URL such as .*, but got '\*\*\*@\[::1'"),
    ("resume-changed-bits", lambda e: ["run", e.study(name="seeded", replace={"bits = [4, 8, 32]": "bits = [4, 8]"})],
     r"cannot resume study 'seeded': `space\.bits` is \[4, 8, 32\] in the stored study but \[4, 8\] in the file"),
    ("resume-changed-objectives", lambda e: ["run", e.study(name="seeded", extra="[objectives]\nmax_size_kb = 10\n")],
     r"cannot resume study 'seeded': `objectives\.max_size_kb` is None in the stored study but 10 in the file"),
    ("resume-changed-teacher-model", lambda e: ["run", e.study(name="seeded", replace={"widths = [8, 16]": "widths = [8, 8]"})],
     r"cannot resume study 'seeded': `task\.model\.widths`"),
    ("worker-for-missing-study", lambda e: ["worker", e.study()], r"study 'fresh' does not exist in 'sqlite:///.*'; start it with `squeeze run`"),
    ("export-missing-study", lambda e: ["export", "nosuch", "--storage", e.url, "--trial", "0", "-o", str(e.tmp / "o")],
     r"study 'nosuch' does not exist"),
    ("export-missing-trial", lambda e: _export(e, 99), r"trial 99 does not exist in study 'seeded' \(it has trials 0 to 1\)"),
    ("export-failed-trial", lambda e: _export(e, e.seeded["failed"]), r"trial 1 of study 'seeded' is FAIL; only COMPLETE trials"),
    ("export-unwritable-path", lambda e: _export(e, e.seeded["complete"], _blocked_path(e)), r"cannot write `.*a-file/out\.squeeze`: `.*a-file` is a file"),
    ("export-neither-trial-nor-front", lambda e: ["export", "seeded", "--storage", e.url, "-o", str(e.tmp / "o")],
     r"`squeeze export` takes exactly one of --trial N or --front"),
]


@pytest.mark.parametrize(("build", "expect"), [pytest.param(b, x, id=i) for i, b, x in CASES])
def test_bad_input(build, expect, seeded, tiny_study, tmp_path, capfd, request) -> None:
    # Only the PostgreSQL cases ask for the database, through the shared fixture and its rules.
    env = Env(tmp=tmp_path, url=seeded["url"], seeded=seeded, make_study=tiny_study,
              pg=lambda: request.getfixturevalue("pg_url"))
    argv = build(env)
    watched = [seeded["url"], *env.watch]
    before = {url: _counts(url) for url in watched}
    files_before = sorted(p.name for p in tmp_path.iterdir())

    if argv[0] == "--python":
        proc = subprocess.run([sys.executable, "-c", argv[1]], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code = main(argv)
        out, err = capfd.readouterr()

    assert code == 2, (code, out, err)
    printed = out + err
    assert "Traceback" not in printed
    assert SECRET not in printed
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    sentence = errors[0][len("error: "):]
    # One sentence: it ends in a full stop, and (in this process, where Python's warnings are
    # captured apart) nothing else was printed around it: no header, no empty progress bar.
    assert sentence.endswith("."), sentence
    if argv[0] != "--python":
        assert err.strip() == errors[0] and not out.strip(), printed
    assert re.search(expect, sentence), sentence
    for url in watched:
        assert _counts(url) == before[url], f"{url} changed"
    new_files = sorted(p.name for p in tmp_path.iterdir() if p.name not in files_before)
    assert not [n for n in new_files if n.endswith((".db", ".squeeze"))], new_files


def test_debug_shows_the_traceback(tiny_study, capfd) -> None:
    path = tiny_study(extra="[bogus]\nx = 1\n")
    with pytest.raises(SqueezeError, match="unknown table `bogus`"):
        main(["--debug", "run", str(path)])


# --------------------------------------------------------------------------- damaged artifact files


@pytest.fixture
def exported(seeded, tmp_path, capfd) -> Path:
    out = tmp_path / "good.squeeze"
    assert main(["export", "seeded", "--storage", seeded["url"], "--trial", str(seeded["complete"]), "-o", str(out)]) == 0
    capfd.readouterr()
    load_artifact(out)  # the untouched file loads
    return out


@pytest.mark.parametrize("damage", ["truncated-half", "truncated-last-byte", "altered-middle-byte", "altered-last-byte",
                                    "empty", "not-an-artifact"])
def test_damaged_artifact_gives_one_sentence(damage, exported) -> None:
    blob = bytearray(exported.read_bytes())
    if damage == "truncated-half":
        blob = blob[: len(blob) // 2]
    elif damage == "truncated-last-byte":
        blob = blob[:-1]
    elif damage.startswith("altered"):
        at = len(blob) // 2 if damage == "altered-middle-byte" else len(blob) - 1
        blob[at] ^= 0x5A
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"PK\x03\x04 a zip file, not an artifact" * 4)
    exported.write_bytes(bytes(blob))
    with pytest.raises(SqueezeError) as info:
        load_artifact(exported)
    message = str(info.value)
    assert str(exported) in message and "\n" not in message and message.endswith(".")
