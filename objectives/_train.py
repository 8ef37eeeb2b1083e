"""Training loops: the teacher, distillation into a student, and fine-tuning.

All loops draw mini-batches from the training split only; the validation and test splits are
never seen here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from squeeze.spaces import SqueezeError


@dataclass(frozen=True)
class TrainingBudget:
    """How much training each stage gets; checked once when the study file is read."""

    teacher_epochs: int = 20
    distill_steps: int = 150
    finetune_steps: int = 60
    qat_steps: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    temperature: float = 4.0
    alpha: float = 0.7
    augment: bool = False
    """Light augmentation (small random turns, scalings and shifts, :func:`augment`) while the teacher
    trains and while ``squeeze finalize`` distils; trials' short distillation sees the images as they are."""

    def __post_init__(self) -> None:
        for key in ("teacher_epochs", "distill_steps", "finetune_steps", "qat_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SqueezeError(f"`training.{key}` must be a non-negative integer, but got {value!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SqueezeError(f"`training.batch_size` must be a positive integer, but got {self.batch_size!r}.")
        for key in ("lr", "temperature"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SqueezeError(f"`training.{key}` must be a positive number, but got {value!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise SqueezeError(f"`training.alpha` must be a number in [0, 1], but got {self.alpha!r}.")
        if not isinstance(self.augment, bool):
            raise SqueezeError(f"`training.augment` must be true or false, but got {self.augment!r}.")


@dataclass(frozen=True)
class Recipe:
    """How one candidate is trained after pruning: steps per stage, the learning-rate warm-up, augmentation.

    A trial's recipe is :meth:`proxy` (a few hundred steps, enough to rank plans); ``squeeze
    finalize`` builds a full one (``squeeze.objectives.final_recipe``).
    """

    distill_steps: int
    finetune_steps: int
    qat_steps: int
    warmup_steps: int = 0
    augment: bool = False
    lr: float | None = None
    """The distillation learning rate; None: the budget's ``lr``."""

    @classmethod
    def proxy(cls, budget: TrainingBudget) -> Recipe:
        """A trial's recipe: the budget's steps, no warm-up, no augmentation."""
        return cls(distill_steps=budget.distill_steps, finetune_steps=budget.finetune_steps, qat_steps=budget.qat_steps)


def training_device(requested: str = "cpu") -> torch.device:
    """Where training runs: ``cuda`` when the study asks for it and a GPU is present, else the CPU."""
    if requested == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class DivergedError(RuntimeError):
    """A loss became NaN or infinite; the trial fails, the study goes on."""


def batches(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless seeded shuffled mini-batches of the training data."""
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - min(batch_size, n) + 1, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def augment(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation: each image turned by up to 10 degrees, scaled by up to 10% and shifted by up to
    1/14 of its side (2 pixels on 28x28), drawn per image, with the edge pixels repeated outside it.

    Small moves keep what an image shows, whatever the data set (a flip would turn a 2 into something
    else, a half turn a 6 into a 9), which is what makes it safe to apply to every image task.
    """
    n = len(x)

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle, scale = uniform(math.radians(10)), 1 + uniform(0.1)
    # affine_grid works in coordinates where a side spans [-1, 1], so 1/14 of the side is 2/14.
    shift_x, shift_y = uniform(2 / 14), uniform(2 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check(loss: torch.Tensor, stage: str) -> None:
    if not math.isfinite(float(loss.detach())):
        raise DivergedError(f"the {stage} loss diverged to {float(loss)}")


def train_teacher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    budget: TrainingBudget,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train ``model`` from scratch with cross-entropy for ``budget.teacher_epochs`` epochs.

    AdamW under a one-cycle schedule (a warm-up over the first 30% of the steps to ``budget.lr``,
    then annealing to nearly 0), with :func:`augment` when ``budget.augment`` is set. Training runs
    on ``device``; the model comes back on the CPU.
    """
    torch.manual_seed(seed)
    model.to(device)
    steps_per_epoch = max(1, len(x) // budget.batch_size)
    total = budget.teacher_epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=max(total, 1))
    model.train()
    data = batches(x, y, batch_size=budget.batch_size, seed=seed)
    shifts = torch.Generator().manual_seed(seed + 5)
    for step in range(total):
        xb, yb = next(data)
        if budget.augment:
            xb = augment(xb, generator=shifts)
        loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
        _check(loss, "teacher")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, total)
    return model.cpu().eval()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, budget: TrainingBudget) -> torch.Tensor:
    """Hinton's distillation loss: soft targets at temperature T mixed with the hard labels."""
    t = budget.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1), reduction="batchmean"
    ) * (t * t)
    return budget.alpha * soft + (1 - budget.alpha) * F.cross_entropy(student_logits, labels)


def distil(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    budget: TrainingBudget,
    seed: int,
    lr: float | None = None,
    stage: str = "distillation",
    device: torch.device | str = "cpu",
    warmup: int = 0,
    augmented: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Train ``student`` to match ``teacher`` for ``steps`` mini-batches.

    The learning rate rises linearly over the first ``warmup`` steps, then decays along a cosine
    to 0. With ``augmented``, every batch goes through :func:`augment` (teacher and student see the
    same shifted images). ``progress(step, steps)`` is called after every step. Training runs on
    ``device``, where ``teacher`` must already be; the student comes back on the CPU.
    """
    if steps <= 0:
        return student.eval()
    torch.manual_seed(seed)
    teacher.eval()
    student.to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=lr or budget.lr, weight_decay=1e-4)
    if warmup > 0:
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    student.train()
    data = batches(x, y, batch_size=budget.batch_size, seed=seed)
    shifts = torch.Generator().manual_seed(seed + 5)
    for step in range(steps):
        xb, yb = next(data)
        if augmented:
            xb = augment(xb, generator=shifts)
        xb, yb = xb.to(device), yb.to(device)
        with torch.no_grad():
            t_logits = teacher(xb)
        loss = kd_loss(student(xb), t_logits, yb, budget=budget)
        _check(loss, stage)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps)
    return student.cpu().eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += int((model(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(x))


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Start a student from the teacher's weights: each tensor takes the teacher's leading slice.

    Students keep the teacher's layer names, so a slimmer or shallower student inherits what it
    can; distillation then repairs what the slicing cut.
    """
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    for name, tensor in s_state.items():
        src = t_state.get(name)
        if src is None or src.dim() != tensor.dim():
            continue
        if src.dim() == 0:
            tensor.copy_(src)
            continue
        slices = tuple(slice(0, min(a, b)) for a, b in zip(tensor.shape, src.shape))
        tensor[slices].copy_(src[slices])
    student.load_state_dict(s_state)
