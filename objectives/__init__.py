"""How a plan is judged: tasks (data), training, compression, materialization and measurement."""

# Importing the loaders registers the built-in tasks (digits, mnist, fashion_mnist, cifar10, cifar100, imagefolder).
from . import _cifar, _digits, _idx, _imagefolder  # noqa: F401
from ._artifact import Arch, Loaded, decode, encode, load_artifact, size_floor
from ._check import CheckReport, StepFailure, check_teacher, isolate, try_plan
from ._compress import PRUNERS, QUANTIZERS, CompressSpec
from ._finalize import FinalizeSpec, accuracy_on_test, final_recipe, finalize_plan
from ._evaluate import (CALIBRATION_SAMPLES, Judged, evaluate, latency_card, latency_key, recard, size_lower_bound,
                        teacher_artifact, time_artifact)
from ._materialize import calibrate, int8_engine
from ._memory import free_models, memory_available, memory_needed, weight_bytes
from ._latency import CPU_CLASS_ENV, RUNTIMES, Latency, LatencySpec, cpu_class, cpu_model, measure
from ._ort import LoadedOnnx, OrtModel, decode_onnx, deploy, load_onnx
from ._task_registry import TaskData, TaskLoader, list_tasks, load_task, register_task, task_loader, unregister_task
from ._train import DivergedError, Recipe, TrainingBudget, accuracy, augment, train_teacher, training_device

__all__ = [
    "CALIBRATION_SAMPLES",
    "CPU_CLASS_ENV",
    "PRUNERS",
    "QUANTIZERS",
    "RUNTIMES",
    "Arch",
    "CheckReport",
    "CompressSpec",
    "DivergedError",
    "FinalizeSpec",
    "Judged",
    "Latency",
    "LatencySpec",
    "Loaded",
    "LoadedOnnx",
    "OrtModel",
    "Recipe",
    "StepFailure",
    "TaskData",
    "TaskLoader",
    "TrainingBudget",
    "accuracy",
    "calibrate",
    "accuracy_on_test",
    "augment",
    "check_teacher",
    "cpu_class",
    "cpu_model",
    "decode",
    "decode_onnx",
    "deploy",
    "encode",
    "final_recipe",
    "finalize_plan",
    "free_models",
    "evaluate",
    "int8_engine",
    "isolate",
    "latency_card",
    "latency_key",
    "size_lower_bound",
    "list_tasks",
    "load_artifact",
    "load_onnx",
    "load_task",
    "measure",
    "memory_available",
    "memory_needed",
    "recard",
    "register_task",
    "size_floor",
    "task_loader",
    "teacher_artifact",
    "time_artifact",
    "train_teacher",
    "training_device",
    "try_plan",
    "unregister_task",
    "weight_bytes",
]
