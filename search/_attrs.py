"""Every attribute squeeze writes on an Optuna trial or study, defined once: its name and meaning.

Optuna keeps user attributes as JSON under string keys, which any Optuna tool (``optuna``'s CLI,
optuna-dashboard) shows; the constants here are the only place those strings are spelt.
"""

from __future__ import annotations

from typing import Any

from squeeze.objectives import Judged


class TrialAttr:
    """Keys of a trial's user attributes."""

    # What was judged and how (written for every completed trial).
    PLAN = "plan"
    """The trial's CompressionPlan as a dict (student, sparsity, bits)."""
    ACCURACY = "accuracy"
    """Accuracy on the validation split (also the first objective value)."""
    SIZE_BYTES = "size_bytes"
    """Bytes of the stored artifact (also the second objective value)."""
    LATENCY = "latency"
    """The latency measurement: ratio, its spread, both models' milliseconds, threads, batch, CPU, versions."""
    LATENCY_KEY = "latency_key"
    """The network that runs and how it was timed: trials with one key share one measurement."""
    LATENCY_REUSED = "latency_reused"
    """True when the latency is an earlier trial's measurement of the same network."""
    LATENCY_FROM_TRIAL = "latency_from_trial"
    """The trial that measured the network, when the latency was reused."""
    TIMED_BY = "timed_by"
    """The host of the study's target class that timed the candidate (the trial's ``worker`` trained it)."""
    LATENCY_DEVICE = "latency_device"
    """Where latency was measured (always the CPU)."""
    DEVICE = "device"
    """Where distillation and fine-tuning ran."""
    WEIGHTS = "weights"
    """Weights each quantized layer keeps: what one bit more or less on a layer costs."""
    ARTIFACT_SHA256 = "artifact_sha256"
    """SHA-256 of the stored artifact's bytes."""
    RUNTIME = "runtime"
    """The runtime the artifact is stored, measured and exported in: ``torch`` (an SQZ1 file) or ``onnxruntime`` (ONNX)."""
    TIMINGS_S = "timings_s"
    """Seconds spent in each stage of the trial."""
    FEASIBLE = "feasible"
    """Whether the trial meets every budget of ``[objectives]``."""
    WORKER = "worker"
    """The host that ran the trial."""
    TRIAL_S = "trial_s"
    """Wall time of the trial, in seconds."""

    # How it ended when it did not complete.
    ERROR = "error"
    """Why a FAIL trial failed, one line."""
    STOPPED_EARLY = "stopped_early"
    """Why a PRUNED trial was stopped before the end (a budget it could not meet, or a plan judged already)."""
    STOPPED_AFTER_S = "stopped_after_s"
    """Seconds a stopped trial ran."""
    SAVED_S = "saved_s"
    """Seconds a stop saved against the median full trial."""
    REPEAT_OF = "repeat_of"
    """The trial that judged a stopped trial's plan already, or (another worker's) was judging it."""

    # Where the parameters came from.
    REFERENCE = "reference"
    """Label of a uniform reference policy (enqueued when the study is new)."""
    SAMPLER = "sampler"
    """The sampler that proposed the trial."""
    SAMPLER_MS = "sampler_ms"
    """Milliseconds the sampler took to propose it."""


class StudyAttr:
    """Keys of a study's user attributes."""

    CREATED = "squeeze_created"
    """Set once squeeze has created the study."""
    OBJECTIVES = "objectives"
    """The objective names, in Optuna's order of values."""
    REFERENCES_ENQUEUED = "references_enqueued"
    """Set once the references are enqueued, so they are enqueued once."""
    SPACE_CHECK = "space_check"
    """What the check before the search took out of the space (each part, step and message) and what stays searched."""
    SPACE_FENCED = "space_fenced"
    """Parts of the space fenced after a trial failed on them alone: never proposed again (``docs/check.md``)."""
    LATENCY_TARGET = "latency_target"
    """Where candidates are timed: ``cpu_class``, ``runtime``, ``threads``, ``batch``; fixed when the study is created."""
    LATENCY_BASELINE = "latency_baseline"
    """The teacher's quiet time on the target (``cpu_class``, ``teacher_ms``), which every measurement's teacher is compared with."""
    TEACHER_ACCURACY = "teacher_accuracy"
    TEACHER_BYTES = "teacher_bytes"
    TEACHER_LATENCY_MS = "teacher_latency_ms"
    TEACHER_SHA256 = "teacher_sha256"
    """The teacher's measured validation accuracy, artifact bytes, latency and weights' digest."""


def judged_attrs(judged: Judged) -> dict[str, Any]:
    """The trial attributes that back a judged candidate's three values."""
    return {
        TrialAttr.DEVICE: judged.device,
        TrialAttr.LATENCY_DEVICE: "cpu",
        TrialAttr.PLAN: judged.plan.to_dict(),
        TrialAttr.ACCURACY: judged.accuracy,
        TrialAttr.SIZE_BYTES: judged.size_bytes,
        TrialAttr.LATENCY_KEY: judged.latency_key,
        TrialAttr.WEIGHTS: dict(judged.weights),
        TrialAttr.ARTIFACT_SHA256: judged.sha256,
        TrialAttr.TIMINGS_S: dict(judged.timings),
    }
