"""Segmentation losses: known values, agreement with cross-entropy and the F1 metric, ignored pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from course_utils.losses import (
    CompoundLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    class_weights,
    make_loss,
)
from course_utils.metrics import confusion_matrix, f1_per_class


def confident_logits(labels: torch.Tensor, classes: int = 3, scale: float = 50.0) -> torch.Tensor:
    """Logits whose softmax is (numerically) the one-hot of ``labels``."""
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float() * scale


@pytest.fixture
def target() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 3, (2, 16, 16), generator=generator)


def test_class_weights_follow_inverse_frequency() -> None:
    masks = np.array([0] * 80 + [1] * 15 + [2] * 5)
    weights = class_weights(masks, 3, power=1.0)
    raw = 100 / (3 * np.array([80, 15, 5]))
    np.testing.assert_allclose(weights.numpy(), raw / raw.mean(), rtol=1e-6)
    assert weights.mean().item() == pytest.approx(1.0)
    softer = class_weights(masks, 3)  # square root: the rare class still weighs most, but less so
    assert softer[2] / softer[0] == pytest.approx(np.sqrt(16.0), rel=1e-5)


def test_class_weights_refuse_a_missing_class() -> None:
    with pytest.raises(ValueError, match="never occur"):
        class_weights(np.array([0, 0, 1]), 3)


def test_dice_is_one_minus_mean_f1_for_hard_predictions(target: torch.Tensor) -> None:
    predicted = target.clone()
    predicted[0, :4] = (predicted[0, :4] + 1) % 3  # a quarter of one image wrong
    loss = DiceLoss(smooth=0.0)(confident_logits(predicted), target)
    f1 = f1_per_class(confusion_matrix(predicted, target, 3))
    assert loss.item() == pytest.approx(1 - f1.mean(), abs=1e-5)
    assert DiceLoss()(confident_logits(target), target).item() == pytest.approx(0.0, abs=1e-5)


def test_dice_counts_a_rare_class_that_cross_entropy_hardly_sees() -> None:
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 10, 5:15] = 2  # ten edge pixels of 1024
    missed = target.clamp(max=1)  # every edge called non-field
    ce = F.cross_entropy(confident_logits(missed, scale=5.0), target)
    dice = DiceLoss()(confident_logits(missed, scale=5.0), target)
    assert ce.item() < 0.1  # barely notices
    assert dice.item() > 0.3  # about one class out of three lost


def test_tversky_with_equal_weights_is_dice(target: torch.Tensor) -> None:
    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    dice = DiceLoss(smooth=1.0)(logits, target)
    tversky = TverskyLoss(alpha=0.5, beta=0.5, gamma=1.0, smooth=0.5)(logits, target)  # same ratio, halved
    assert tversky.item() == pytest.approx(dice.item(), abs=1e-6)


def test_tversky_beta_punishes_missed_pixels_more() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :, :4] = 1
    missed = target.clone()
    missed[0, :, 3] = 0  # false negatives of class 1
    recall_heavy = TverskyLoss(alpha=0.2, beta=0.8)(confident_logits(missed, 2), target)
    precision_heavy = TverskyLoss(alpha=0.8, beta=0.2)(confident_logits(missed, 2), target)
    assert recall_heavy > precision_heavy


def test_focal_with_gamma_zero_is_cross_entropy(target: torch.Tensor) -> None:
    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = F.cross_entropy(logits, target)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(plain.item(), rel=1e-5)
    weight = torch.tensor([0.5, 1.0, 2.0])
    expected = (F.cross_entropy(logits, target, reduction="none") * weight[target]).mean()
    assert FocalLoss(gamma=0.0, weight=weight)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_fades_out_easy_pixels() -> None:
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0], logits[0, 0, 0, 1] = 4.0, -1.0  # pixel 0 easy (p ~ 0.98), pixel 1 hard (p ~ 0.27)
    per_pixel_ce = F.cross_entropy(logits, target, reduction="none")[0, 0]
    easy_share_ce = per_pixel_ce[0] / per_pixel_ce.sum()
    p = logits.softmax(1)[0, 0, 0]
    focal = -((1 - p) ** 2) * p.log()
    assert focal[0] / focal.sum() < easy_share_ce / 100  # the easy pixel's share shrinks by > 100x


def test_ignored_pixels_change_nothing(target: torch.Tensor) -> None:
    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ignored = target.clone()
    ignored[:, :8] = 255
    changed = logits.clone()
    changed[:, :, :8] = torch.randn(2, 3, 8, 16)  # other logits where the target is ignored
    for loss in (DiceLoss(ignore_index=255), TverskyLoss(ignore_index=255), FocalLoss(ignore_index=255)):
        assert loss(logits, ignored).item() == pytest.approx(loss(changed, ignored).item(), abs=1e-6)


def test_losses_compute_in_float32_from_bfloat16_logits(target: torch.Tensor) -> None:
    weights = class_weights(target, 3)
    losses = (DiceLoss(), TverskyLoss(gamma=0.75), FocalLoss(weight=weights), make_loss("focal_tversky", weights))
    for loss_fn in losses:
        logits = torch.randn(2, 3, 16, 16).to(torch.bfloat16).requires_grad_()
        loss = loss_fn(logits, target)
        loss.backward()
        assert loss.dtype == torch.float32
        assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0


def test_compound_and_make_loss() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 3, 4, 4)
    both = CompoundLoss(DiceLoss(), DiceLoss(), weights=(1.0, 2.0))(logits, target)
    assert both.item() == pytest.approx(3 * DiceLoss()(logits, target).item())
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="needs class weights"):
        make_loss("ce_dice")
    with pytest.raises(ValueError, match="2 weights"):
        CompoundLoss(DiceLoss(), weights=(1.0, 2.0))
