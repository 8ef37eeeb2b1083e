"""Training: light augmentation, the teacher's schedule, the distillation warm-up, and the trial recipe."""

from __future__ import annotations

import pytest
import torch

from squeeze.objectives import Recipe, TrainingBudget, augment, load_task, train_teacher
from squeeze.spaces import SqueezeError, get_family


def test_augment_shifts_each_image_by_at_most_two_pixels_and_repeats_the_edges() -> None:
    x = torch.randn(64, 3, 28, 28)
    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    shifts = []
    for i in range(len(x)):
        # Each output is one 28x28 window of the padded input: find which.
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28])]
        assert found, f"image {i} is not a shift of its input by at most 2 pixels"
        shifts.append(found[0])
    assert len(set(shifts)) > 5  # shifts are drawn per image, not one for the batch
    again = augment(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded


def test_augment_scales_the_shift_with_the_image() -> None:
    x = torch.arange(56 * 56, dtype=torch.float32).reshape(1, 1, 56, 56).repeat(200, 1, 1, 1)
    out = augment(x, generator=torch.Generator().manual_seed(1))
    # Up to 4 pixels on 56x56: the top-left pixel moves by at most 4 rows and 4 columns.
    corner = out[:, 0, 0, 0].long()
    rows, cols = corner // 56, corner % 56
    assert rows.max() == 4 and cols.max() == 4 and rows.min() == 0


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
