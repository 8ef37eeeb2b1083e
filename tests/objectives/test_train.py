"""Training: light augmentation, the teacher's schedule, the distillation warm-up, and the trial recipe."""

from __future__ import annotations

import pytest
import torch

from squeeze.objectives import Recipe, TrainingBudget, augment, load_task, train_teacher
from squeeze.spaces import SqueezeError, get_family


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Each image's centre of brightness, (row, column) in pixels."""
    h, w = x.shape[-2:]
    mass = x.sum(dim=(-2, -1)).clamp_min(1e-9)
    rows = (x.sum(-1) * torch.arange(h)).sum(-1) / mass
    cols = (x.sum(-2) * torch.arange(w)).sum(-1) / mass
    return torch.stack([rows, cols], -1)


def test_augment_moves_each_image_a_little_and_each_its_own_way() -> None:
    x = torch.zeros(200, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # a bar in the middle, like a 1
    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    moved = (_centre(out[:, 0]) - _centre(x[:, 0])).norm(dim=-1)
    # Up to 2 pixels of shift, plus what 10 degrees and 10% do to a point 0.5 pixel from the centre.
    assert moved.max() < 2 * 2 ** 0.5 + 0.5 and moved.mean() > 0.5
    assert len({tuple(row.tolist()) for row in torch.round(_centre(out[:, 0]), decimals=1)}) > 100  # drawn per image
    assert torch.equal(out, augment(x, generator=torch.Generator().manual_seed(0)))  # seeded
    assert not torch.equal(out, augment(x, generator=torch.Generator().manual_seed(1)))


def test_augment_repeats_the_edges_rather_than_bringing_in_zeros() -> None:
    # Normalised images have a non-zero background: padding with zeros would draw a frame around them.
    x = torch.full((16, 3, 32, 32), -0.42)
    out = augment(x, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out, x, atol=1e-6)


def test_training_augment_must_be_a_bool() -> None:
    with pytest.raises(SqueezeError, match=r"`training\.augment` must be true or false, but got 'yes'"):
        TrainingBudget(augment="yes")  # type: ignore[arg-type]


def test_a_trials_recipe_is_the_budget() -> None:
    budget = TrainingBudget(distill_steps=11, finetune_steps=7, qat_steps=3, augment=True)
    recipe = Recipe.proxy(budget)
    # Trials rank plans on a few hundred steps as they always did: no warm-up, no augmentation.
    assert (recipe.distill_steps, recipe.finetune_steps, recipe.qat_steps) == (11, 7, 3)
    assert recipe.warmup_steps == 0 and not recipe.augment and recipe.lr is None


def test_augmented_teacher_training_sees_other_images_and_plain_training_is_unchanged() -> None:
    data = load_task("digits", options={}, seed=0, holdout=0.3, data_dir=None)
    family = get_family("cnn")
    options = family.check_options({"widths": [4, 8], "depths": [1, 1]})

    def trained(**kwargs) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = family.build(options, in_channels=1, num_classes=10)
        train_teacher(model, data.x_train, data.y_train, budget=TrainingBudget(teacher_epochs=1, **kwargs), seed=0)
        return model.state_dict()

    plain, again, shifted = trained(), trained(), trained(augment=True)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert not all(torch.equal(plain[k], shifted[k]) for k in plain)
