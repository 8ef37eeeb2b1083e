"""Shared fixtures: tiny study files, a fresh PostgreSQL database for the run, the real MNIST folder.

PostgreSQL tests read the server URL from ``SQUEEZE_TEST_POSTGRES`` (for example
``postgresql+psycopg://root@127.0.0.1:5432/test``); they create a database of their own for the
run and drop it afterwards. Tests on the real MNIST files take them from ``../shared/data/mnist``
beside the repository (fixture ``mnist_dir``). Without either, those tests skip with a message;
``.ci/run`` sets ``SQUEEZE_REQUIRE_POSTGRES=1`` and ``SQUEEZE_REQUIRE_MNIST=1``, which turn
those skips into failures, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ENV = "SQUEEZE_TEST_POSTGRES"
REQUIRE_PG_ENV = "SQUEEZE_REQUIRE_POSTGRES"
REQUIRE_MNIST_ENV = "SQUEEZE_REQUIRE_MNIST"
REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
"""What the MNIST tests read (MNIST's 10,000 test images, as published)."""

TINY_STUDY = """
[study]
name = "{name}"
storage = "{storage}"
trials = {trials}
sampler = "random"
seed = 0
snapshot_every = 2
references = {references}

[task]
dataset = "digits"
family = "cnn"
holdout = 0.3

[task.model]
widths = [8, 16]
depths = [1, 1]

[space]
sparsity = [0.0, 0.5]
bits = [4, 8, 32]
width = [0.5, 1.0]

[training]
teacher_epochs = 8
distill_steps = 10
finetune_steps = 5
qat_steps = 5
batch_size = 64

[latency]
runtime = "torch"
repeats = 5
warmup = 1
min_round_ms = 0.5
"""


@pytest.fixture
def tiny_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny digits study file; returns its path. Keyword arguments fill the template."""

    def make(*, name: str = "tiny", storage: str | None = None, trials: int = 3, references: bool = False,
             extra: str = "") -> Path:
        storage = storage or f"sqlite:///{tmp_path / 'studies.db'}"
        text = TINY_STUDY.format(name=name, storage=storage, trials=trials,
                                 references="true" if references else "false")
        path = tmp_path / f"{name}.toml"
        path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
        return path

    return make


def skip_unless_present(why: str, *, required_by: str) -> None:
    """Skip the test because ``why``, or fail it when ``$required_by`` is 1 (CI: the test must run)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {why}: this test must run here, "
                    f"so provide what it needs or unset {required_by}.")
    pytest.skip(why)


def find_mnist(folder: Path) -> Path:
    """``folder`` if it holds the MNIST files; otherwise skip (or fail, under ``SQUEEZE_REQUIRE_MNIST=1``)."""
    missing = [name for name in MNIST_FILES if not (folder / name).is_file()]
    if not folder.is_dir():
        skip_unless_present(f"there is no MNIST folder at {folder}", required_by=REQUIRE_MNIST_ENV)
    elif missing:
        skip_unless_present(f"the MNIST folder {folder} lacks {', '.join(missing)}", required_by=REQUIRE_MNIST_ENV)
    return folder


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder, ``../shared/data/mnist`` beside the repository; every test that reads it asks for it."""
    return find_mnist(MNIST)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped afterwards)."""
    base = os.environ.get(PG_ENV)
    if not base:
        skip_unless_present(f"{PG_ENV} is not set (a server URL such as postgresql+psycopg://root@127.0.0.1:5432/test)",
                            required_by=REQUIRE_PG_ENV)
    with fresh_pg_database(base, prefix="squeeze_test") as url:
        yield url


@contextlib.contextmanager
def fresh_pg_database(server: str, *, prefix: str) -> Iterator[str]:
    """Create a new, empty PostgreSQL database on ``server``; yield its URL; drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ), {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
