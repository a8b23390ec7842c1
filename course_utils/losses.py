"""Segmentation losses that take a rare class seriously (field edges, roads, water in a dry scene).

All losses take logits ``[B, K, H, W]`` (what a segmentation network returns) and integer targets
``[B, H, W]`` in ``0..K-1``, and return a scalar. They compute in float32, also under mixed precision.

* :func:`class_weights`: inverse-frequency weights for cross-entropy (rare classes count more);
* :class:`DiceLoss`: one minus the soft Dice (F1) score per class, averaged over classes, so a class of
  1 % of the pixels counts as much as one of 60 % (Milletari et al., 2016; Sudre et al., 2017);
* :class:`TverskyLoss`: Dice with separate weights for false positives and false negatives, and an
  optional focal exponent (Salehi et al., 2017; Abraham and Khan, 2019);
* :class:`FocalLoss`: cross-entropy that down-weights pixels the model already gets right (Lin et al., 2017);
* :class:`CompoundLoss`: a weighted sum, e.g. cross-entropy + Dice;
* :func:`make_loss`: the named recipes the course compares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOSS_NAMES = ("ce", "weighted_ce", "ce_dice", "focal_tversky")
"""The recipes :func:`make_loss` builds: plain and class-weighted cross-entropy, weighted CE + Dice,
focal + focal-Tversky."""


def class_weights(masks: torch.Tensor | np.ndarray, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Cross-entropy weights ``(N / (K n_k)) ** power`` from label masks, scaled to average 1.

    ``n_k`` counts the pixels of class ``k`` among all ``N`` pixels of ``masks`` (any shape).
    ``power=1`` is plain inverse frequency (every class then weighs the same in total); the default
    square root is milder, which keeps the common classes from being neglected.

    Raises:
        ValueError: if a class never occurs (its weight would be infinite).
    """
    values = torch.as_tensor(np.asarray(masks)).reshape(-1).long()
    counts = torch.bincount(values, minlength=num_classes)[:num_classes].double()
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).ravel().tolist()
        raise ValueError(f"classes {missing} never occur in the masks; class weights need every class present.")
    weights = (counts.sum() / (num_classes * counts)) ** power
    return (weights / weights.mean()).float()


def _probabilities_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot targets ``[B, K, H, W]``, with ignored pixels zeroed in both."""
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(f"expected logits [B, K, H, W] and target [B, H, W], got {list(logits.shape)} and "
                         f"{list(target.shape)}")
    num_classes = logits.shape[1]
    probabilities = logits.float().softmax(1)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    keep = valid[:, None].float()
    return probabilities * keep, onehot * keep


class DiceLoss(nn.Module):
    r"""One minus the soft Dice score, per class over the whole batch, averaged over classes.

    .. math:: \mathcal{L} = 1 - \frac{1}{K}\sum_k \frac{2\sum_i p_{ik} y_{ik} + s}{\sum_i p_{ik} + \sum_i y_{ik} + s}

    with softmax probabilities ``p``, one-hot targets ``y`` and a smoothing constant ``s``.

    Args:
        smooth: ``s``; keeps the ratio defined for a class absent from a batch.
        weight: optional per-class weights of the average.
        ignore_index: target value left out.
    """

    def __init__(
        self, smooth: float = 1.0, weight: torch.Tensor | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        self.smooth, self.ignore_index = smooth, ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, y = _probabilities_and_onehot(logits, target, self.ignore_index)
        dims = (0, 2, 3)
        dice = (2 * (p * y).sum(dims) + self.smooth) / (p.sum(dims) + y.sum(dims) + self.smooth)
        if self.weight is None:
            return 1 - dice.mean()
        return 1 - (dice * self.weight).sum() / self.weight.sum()


class TverskyLoss(nn.Module):
    r"""One minus the Tversky index per class, optionally raised to a focal exponent, averaged over classes.

    .. math:: T_k = \frac{TP_k}{TP_k + \alpha\,FP_k + \beta\,FN_k}, \qquad
              \mathcal{L} = \frac{1}{K}\sum_k (1 - T_k)^{\gamma}

    with soft counts ``TP = sum p y``, ``FP = sum p (1 - y)``, ``FN = sum (1 - p) y``. ``alpha = beta = 0.5``
    is the Dice loss; ``beta > alpha`` punishes missed pixels (false negatives) more, which favours recall
    of a thin class. ``gamma < 1`` (focal Tversky, 0.75 in Abraham and Khan, 2019) keeps the gradient
    large for classes that are already fairly good, ``gamma = 1`` is the plain Tversky loss.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma, self.smooth, self.ignore_index = alpha, beta, gamma, smooth, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, y = _probabilities_and_onehot(logits, target, self.ignore_index)
        dims = (0, 2, 3)
        tp = (p * y).sum(dims)
        fp = (p * (1 - y)).sum(dims)
        fn = ((1 - p) * y).sum(dims)
        tversky = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return ((1 - tversky).clamp_min(0) ** self.gamma).mean()


class FocalLoss(nn.Module):
    r"""Focal loss: cross-entropy scaled by ``(1 - p_t) ** gamma``, averaged over pixels.

    .. math:: \mathcal{L} = -\frac{1}{N}\sum_i w_{y_i} (1 - p_{i,y_i})^{\gamma} \log p_{i,y_i}

    Pixels the model already classifies confidently (``p_t`` near 1) contribute almost nothing, so the
    many easy background pixels stop dominating. ``gamma = 0`` is (weighted) cross-entropy.
    """

    def __init__(
        self, gamma: float = 2.0, weight: torch.Tensor | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.ignore_index = gamma, ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(1)
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        safe = torch.where(valid, target, 0).long()
        log_pt = log_p.gather(1, safe[:, None])[:, 0]
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            loss = loss * self.weight[safe]
        return (loss * valid).sum() / valid.sum().clamp_min(1)


class CompoundLoss(nn.Module):
    """A weighted sum of losses, e.g. ``CompoundLoss(nn.CrossEntropyLoss(), DiceLoss())``."""

    def __init__(self, *losses: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not losses:
            raise ValueError("CompoundLoss needs at least one loss")
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if len(weights) != len(losses):
            raise ValueError(f"{len(losses)} losses but {len(weights)} weights")
        self.losses, self.weights = nn.ModuleList(losses), weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses, strict=True))


def make_loss(name: str, weight: torch.Tensor | None = None, ignore_index: int | None = None) -> nn.Module:
    """One of the course's loss recipes by name (see :data:`LOSS_NAMES`).

    Args:
        name: ``"ce"`` plain cross-entropy; ``"weighted_ce"`` cross-entropy with ``weight``;
            ``"ce_dice"`` weighted cross-entropy + Dice; ``"focal_tversky"`` focal loss + focal Tversky
            (``alpha=0.3, beta=0.7, gamma=0.75``).
        weight: per-class weights (from :func:`class_weights`); needed by all but ``"ce"``.
        ignore_index: target value left out of every term (e.g. nodata, or pixels outside a scene's training part).
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if name != "ce" and weight is None:
        raise ValueError(f"loss {name!r} needs class weights: make_loss({name!r}, class_weights(masks, K))")
    ignored = {} if ignore_index is None else {"ignore_index": ignore_index}
    if name == "ce":
        return nn.CrossEntropyLoss(**ignored)
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight, **ignored)
    if name == "ce_dice":
        return CompoundLoss(nn.CrossEntropyLoss(weight=weight, **ignored), DiceLoss(**ignored))
    return CompoundLoss(FocalLoss(gamma=2.0, weight=weight, **ignored),
                        TverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, **ignored))  # fmt: skip
