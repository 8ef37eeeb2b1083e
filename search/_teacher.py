"""The study's teacher: trained (or loaded from a checkpoint) once per study, stored, shared.

The teacher row is claimed before training, so one worker trains while the others wait and load
it; a claim whose owner stops heart-beating is taken over.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
import torch

from squeeze.objectives import TaskData, accuracy, deploy, measure, teacher_artifact, train_teacher, training_device
from squeeze.spaces import SqueezeError, checkpoint_of, get_family, load_checkpoint, load_weights

from . import _teacher_store as tst
from ._attrs import StudyAttr
from ._context import Context
from ._study_views import write_note_once
from ._timing import record_baseline


@dataclass
class TeacherBundle:
    """The study's teacher: the float model (students start from it), its deployed artifact (in the study's runtime) and its figures."""

    model: torch.nn.Module
    deployed: torch.nn.Module
    accuracy: float
    size_bytes: int
    latency_ms: float
    sha256: str


def _state_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def ensure_teacher(ctx: Context, data: TaskData, *, log: Callable[[str], None] = lambda _: None) -> TeacherBundle:
    """The study's teacher: loaded from the database, or trained once here and stored."""
    from safetensors.torch import load

    spec = ctx.spec
    family = get_family(spec.task.family)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    row = tst.claim_teacher(ctx.engine, spec.study.name, owner, stale_after_s=spec.study.grace_s)
    # The teacher's first weights come from the study's seed, not from whatever the process drew
    # before: the same study file trains the same teacher in any fresh database.
    torch.manual_seed(spec.study.seed)
    model = family.build(spec.task.model, in_channels=data.in_channels, num_classes=data.num_classes)
    if row is None:
        checkpoint = checkpoint_of(spec.task.model)
        log("loading the teacher's checkpoint" if checkpoint else "training the teacher (once per study)")
        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(ctx.engine, spec.study.name, owner, stop, spec.study.heartbeat_s),
                                daemon=True)
        beat.start()
        try:
            if checkpoint:
                # A trained teacher: no training; it is measured and stored like a trained one.
                load_checkpoint(model, checkpoint, family=spec.task.family)
            else:
                train_teacher(model, data.x_train, data.y_train, budget=spec.training, seed=spec.study.seed,
                              device=training_device(spec.task.device))
            weights = _state_bytes(model)
            # The teacher in the study's runtime: an SQZ1 artifact (torch) or an ONNX model (onnxruntime).
            art = teacher_artifact(model, family=family, options=spec.task.model, data=data, runtime=spec.latency.runtime)
            deployed = deploy(art, runtime=spec.latency.runtime, family=family, threads=spec.latency.threads)
            acc = accuracy(deployed, data.x_holdout, data.y_holdout)
            lat = measure(deployed, deployed, data.x_train[:1], spec=spec.latency)
            tst.store_teacher(ctx.engine, spec.study.name, owner, weights=weights, artifact=art,
                             sha256=hashlib.sha256(weights).hexdigest(), accuracy=acc, size_bytes=len(art),
                             latency_ms=lat.teacher_ms)
        except BaseException:
            # Ctrl-C, or a teacher that cannot be trained: the next run starts at once, not after grace_s.
            try:
                tst.release_teacher(ctx.engine, spec.study.name, owner)
            except Exception:  # noqa: BLE001 - the claim then goes stale after grace_s, as if killed
                pass
            raise
        finally:
            stop.set()
        row = tst.get_teacher(ctx.engine, spec.study.name)
        assert row is not None
        ctx.study.set_user_attr(StudyAttr.TEACHER_ACCURACY, row.accuracy)
        ctx.study.set_user_attr(StudyAttr.TEACHER_BYTES, row.size_bytes)
        ctx.study.set_user_attr(StudyAttr.TEACHER_LATENCY_MS, row.latency_ms)
        ctx.study.set_user_attr(StudyAttr.TEACHER_SHA256, row.sha256)
        if ctx.target is not None and ctx.target.here():
            # Timed on the target: the baseline each measurement's teacher is compared with.
            record_baseline(ctx.study, ctx.target, row.latency_ms)
        # Now the figures are known, the note that optuna-dashboard shows on the study's page (with the extra).
        write_note_once(ctx.study, spec.to_dict())
    else:
        log("loading the stored teacher")
    try:
        load_weights(model, load(row.weights))
    except RuntimeError:
        raise SqueezeError(
            f"the stored teacher of study {spec.study.name!r} does not fit `task.model`; use a new study name."
        ) from None
    model.eval()
    # The family is the study file's, never a name read from the stored bytes (the database may come from elsewhere).
    deployed = deploy(row.artifact, runtime=spec.latency.runtime, family=family, threads=spec.latency.threads,
                      source=f"the stored teacher of study {spec.study.name!r}")
    return TeacherBundle(model=model, deployed=deployed, accuracy=row.accuracy, size_bytes=row.size_bytes,
                         latency_ms=row.latency_ms, sha256=row.sha256)


def _beat(engine: sa.Engine, study: str, owner: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            tst.beat_teacher(engine, study, owner)
        except Exception:  # noqa: BLE001 - a missed beat only risks another worker taking over
            pass
