"""Downloadable artifacts: an Optuna artifact store beside the study, which optuna-dashboard serves.

Optuna's artifact stores (``optuna.artifacts``) keep files that a trial or a study names in a system
attribute; optuna-dashboard lists them on the trial's (or study's) page with a download link. squeeze
registers every completed trial's artifact there (the bytes ``squeeze export`` writes), and finished
models too, through :func:`register_artifact`.

Where the store lives follows the storage URL, so that everything that reads the study finds it:

- **SQLite** (one machine): the folder ``<database file>-artifacts`` beside the database (for the default
  storage, ``studies/squeeze.db-artifacts``), Optuna's :class:`~optuna.artifacts.FileSystemArtifactStore`;
  plain ``optuna-dashboard sqlite:///studies/squeeze.db --artifact-dir studies/squeeze.db-artifacts`` serves
  it as well.
- **A database server** (PostgreSQL): the table ``squeeze_artifact_files`` in the same database, because
  the database is the only thing that workers on many machines share (a folder on one of them is not).

An in-memory SQLite database has no place for files: nothing is registered there. Nothing read from a
store is ever executed; the dashboard only hands the bytes to a browser.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import optuna
import sqlalchemy as sa
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy.orm import Mapped, Session, mapped_column

from . import _storage as st
from ._context import quiet_optuna

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from ._context import Context

ARTIFACT_FOLDER_SUFFIX = "-artifacts"
"""A SQLite study's artifact folder is its database file's name plus this."""


class ArtifactFileRow(st.Base):
    """One file of a :class:`DatabaseArtifactStore`: an artifact id (Optuna's UUID) and its bytes."""

    __tablename__ = "squeeze_artifact_files"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


class DatabaseArtifactStore:
    """Optuna's artifact-store protocol (``open_reader``, ``write``, ``remove``) on a table of the study database."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """The artifact's bytes; :class:`ArtifactNotFound` when no file has that id."""
        with Session(self._engine) as s:
            row = s.get(ArtifactFileRow, artifact_id)
            if row is None:
                raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the study database.")
            return io.BytesIO(row.data)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Keep ``content_body``'s bytes under ``artifact_id`` (replacing a file of that id)."""
        with Session(self._engine) as s:
            s.merge(ArtifactFileRow(id=artifact_id, data=content_body.read()))
            s.commit()

    def remove(self, artifact_id: str) -> None:
        """Delete the file; :class:`ArtifactNotFound` when there is none."""
        with Session(self._engine) as s:
            deleted = s.execute(sa.delete(ArtifactFileRow).where(ArtifactFileRow.id == artifact_id)).rowcount
            s.commit()
        if not deleted:
            raise ArtifactNotFound(f"artifact {artifact_id!r} is not in the study database.")


def artifact_folder(url: str) -> Path | None:
    """A SQLite study's artifact folder (``<database file>-artifacts``); None for other or in-memory storages."""
    parsed = st.parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(f"{parsed.database}{ARTIFACT_FOLDER_SUFFIX}")


def artifact_store(url: str, *, engine: sa.Engine | None = None) -> ArtifactStore | None:
    """The artifact store of the studies at ``url`` (see the module's docstring); None where there is no place for files.

    ``engine``, where the caller holds one for ``url``, saves opening another for a database store.
    """
    parsed = st.parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        folder = artifact_folder(url)
        if folder is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(folder)
    return DatabaseArtifactStore(engine if engine is not None else st.engine_for(url))


def register_artifact(ctx: Context, blob: bytes, *, name: str, trial: optuna.Trial | None = None) -> str | None:
    """Offer ``blob`` for download as the file ``name`` in the study's artifact store; returns its artifact id.

    With ``trial`` (a running trial: Optuna refuses attributes on a finished one) the file is listed on
    that trial's page; without, on the study's page, which is where a finished model of an earlier trial
    goes (name it after its trial, for example ``trial-7-final.squeeze``). Returns None, having written
    nothing, when the storage has no place for files (an in-memory SQLite database).
    """
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"an artifact's name must be a plain file name, but got {name!r}.")
    store = artifact_store(ctx.url, engine=ctx.engine)
    if store is None:
        return None
    # upload_artifact takes a path (its file name is the one the browser saves), so the bytes go through
    # a private temporary folder.
    with tempfile.TemporaryDirectory(prefix="squeeze-artifact-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        with quiet_optuna():
            return upload_artifact(artifact_store=store, file_path=str(path),
                                   study_or_trial=trial if trial is not None else ctx.study,
                                   mimetype="application/octet-stream")


def artifact_name(number: int, runtime: str) -> str:
    """The file name of trial ``number``'s artifact: ``trial-<N>.onnx`` for ONNX Runtime, else ``trial-<N>.squeeze``."""
    return f"trial-{number}.{'onnx' if runtime == 'onnxruntime' else 'squeeze'}"
