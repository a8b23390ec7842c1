"""Data fusion, multitask learning and MC-dropout uncertainty: the reference models of notebook 05.

* :func:`broadcast_scalars`: per-patch numbers (climate zone, season, weather) blown up to constant planes,
  so that they can be stacked with co-registered rasters (early fusion).
* :class:`FusionNet`: a small encoder-decoder (two downsamplings, skips) with up to three task heads
  (``seg``: per-pixel logits, ``cls``: patch logits, ``reg``: patch cover fractions). It fuses its input
  modalities in one of three places:

  - ``early``: every modality (and the scalar planes) concatenated into one input, one backbone;
  - ``late``: one full backbone per modality, their features concatenated just before the shared heads;
  - ``middle``: one encoder per modality; at the bottleneck the first modality's tokens attend to the others'
    (:class:`course_utils.models.vit.CrossAttentionBlock`), then one shared decoder.

  It always returns a dict ``{task: tensor}``.
* :class:`MultitaskLoss`: the weighted sum of the task losses, with fixed weights, uncertainty weighting
  (Kendall, Gal & Cipolla, 2018) or KPI-driven focal weighting (Hanna et al., 2021; after Guo et al., 2018).
* :func:`mc_dropout_predict`, :func:`predictive_entropy` and :func:`accuracy_coverage`: Monte Carlo dropout
  at test time (Gal & Ghahramani, 2016) and the accuracy of the predictions kept when the uncertain ones are
  dropped; :func:`fit_temperature`: temperature scaling of the logits (Guo et al., 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.models.unet import conv_block
from course_utils.models.vit import CrossAttentionBlock

TASKS = ("seg", "cls", "reg")
FUSIONS = ("early", "late", "middle")


def broadcast_scalars(scalars: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Blow per-sample scalars ``[B, K]`` up to constant planes ``[B, K, H, W]`` (each plane equals its scalar)."""
    if scalars.ndim != 2:
        raise ValueError(f"scalars must be [batch, values], got shape {list(scalars.shape)}.")
    height, width = (size, size) if isinstance(size, int) else size
    return scalars[:, :, None, None].expand(-1, -1, height, width)


class Encoder(nn.Module):
    """Three levels of ``conv_block`` (width, 2 width, 4 width channels) with 2x2 max pooling between them.

    ``dropout`` drops whole feature channels (``Dropout2d``) after the second and third level, so that MC dropout
    at test time varies the features every head and the decoder see.
    """

    def __init__(self, in_channels: int, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            [conv_block(in_channels, width), conv_block(width, 2 * width), conv_block(2 * width, 4 * width)]
        )
        self.dropout = nn.Dropout2d(dropout)
        self.channels = (width, 2 * width, 4 * width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, level in enumerate(self.levels):
            x = level(x if index == 0 else F.max_pool2d(x, 2))
            x = self.dropout(x) if index > 0 else x
            features.append(x)
        return features  # full, 1/2 and 1/4 resolution


class Decoder(nn.Module):
    """Bilinear upsampling, concatenation with the skip features, ``conv_block``; twice, back to full size."""

    def __init__(self, channels: Sequence[int], width: int) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.up1 = conv_block(c2 + c1, 2 * width)
        self.up0 = conv_block(2 * width + c0, width)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f0, f1, f2 = features
        x = F.interpolate(f2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up1(torch.cat([x, f1], dim=1))
        x = F.interpolate(x, size=f0.shape[-2:], mode="bilinear", align_corners=False)
        return self.up0(torch.cat([x, f0], dim=1))


class FusionNet(nn.Module):
    """A small encoder-decoder that fuses several co-registered modalities and serves up to three tasks.

    Args:
        channels: input modalities and their band counts, in the order ``forward`` takes them,
            e.g. ``{"s2": 12, "s1": 2}``.
        tasks: heads and their output sizes, among ``seg`` (classes per pixel), ``cls`` (patch classes) and
            ``reg`` (patch cover fractions, a softmax over that many classes, times ``reg_scale``).
        fusion: ``early``, ``late`` or ``middle`` (see the module docstring).
        scalars: number of per-patch scalars passed after the rasters (0: none). They are broadcast to planes
            and join the input (early fusion) or the first modality's input (late and middle fusion).
        width: channels of the first level (doubling per level).
        dropout: dropout in the backbone (see :class:`Encoder`) and before every head; MC dropout samples it at
            test time.
        heads: attention heads of the cross-attention block (middle fusion).
        reg_scale: what the ``reg`` fractions are multiplied by, e.g. the patch's area in hectares to predict the
            area of each class in hectares (1: the fractions themselves).

    ``forward(*rasters, scalars)`` takes ``[B, C_m, H, W]`` per modality (H and W divisible by 4) and, with
    ``scalars > 0``, a ``[B, scalars]`` tensor last; it returns ``{task: logits or fractions}``.
    """

    def __init__(
        self,
        channels: dict[str, int],
        tasks: dict[str, int],
        fusion: str = "early",
        scalars: int = 0,
        width: int = 16,
        dropout: float = 0.1,
        heads: int = 4,
        reg_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels is empty: give at least one modality, e.g. {'s2': 12}.")
        if not tasks or set(tasks) - set(TASKS):
            raise ValueError(f"tasks {sorted(tasks)} must be a non-empty subset of {TASKS}.")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}.")
        if fusion != "early" and len(channels) < 2:
            raise ValueError(f"{fusion} fusion needs at least two modalities; use fusion='early' for one.")
        self.modalities, self.tasks, self.fusion, self.scalars = tuple(channels), dict(tasks), fusion, scalars
        self.reg_scale = reg_scale
        sizes = list(channels.values())
        sizes[0] += scalars  # scalar planes join the (first) input
        if fusion == "early":
            sizes = [sum(sizes)]
        self.encoders = nn.ModuleList([Encoder(c, width, dropout) for c in sizes])
        branch = self.encoders[0].channels
        n = len(self.encoders)
        if fusion == "middle":
            self.cross = CrossAttentionBlock(branch[2], heads=heads, dropout=0.0)
            self.merge = nn.Conv2d(n * branch[2], branch[2], 1)  # the fused tokens and the branches' own
        needs_decoder = "seg" in tasks
        if fusion == "late":
            self.decoders = nn.ModuleList([Decoder(branch, width) for _ in range(n)]) if needs_decoder else None
            pixel_features, patch_features = n * width, n * branch[2]
        elif fusion == "middle":
            skips = (n * branch[0], n * branch[1], branch[2])
            self.decoders = nn.ModuleList([Decoder(skips, width)]) if needs_decoder else None
            pixel_features, patch_features = width, branch[2]
        else:
            self.decoders = nn.ModuleList([Decoder(branch, width)]) if needs_decoder else None
            pixel_features, patch_features = width, branch[2]
        self.heads = nn.ModuleDict()
        for task, size in tasks.items():
            if task == "seg":
                self.heads[task] = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(pixel_features, size, 1))
            else:
                self.heads[task] = nn.Sequential(nn.Dropout(dropout), nn.Linear(patch_features, size))

    def _inputs(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        expected = len(self.modalities) + (1 if self.scalars else 0)
        if len(args) != expected:
            raise ValueError(
                f"FusionNet takes {expected} inputs ({', '.join(self.modalities)}"
                f"{', scalars' if self.scalars else ''}), got {len(args)}."
            )
        rasters = list(args[: len(self.modalities)])
        if self.scalars:
            rasters[0] = torch.cat([rasters[0], broadcast_scalars(args[-1], rasters[0].shape[-2:])], dim=1)
        return [torch.cat(rasters, dim=1)] if self.fusion == "early" else rasters

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        rasters = self._inputs(args)
        if rasters[0].shape[-1] % 4 or rasters[0].shape[-2] % 4:
            raise ValueError(f"height and width must be divisible by 4, got {list(rasters[0].shape[-2:])}.")
        branches = [encoder(x) for encoder, x in zip(self.encoders, rasters, strict=True)]
        if self.fusion == "middle":
            bottlenecks = [b[2] for b in branches]
            batch, dim, height, width = bottlenecks[0].shape
            query = bottlenecks[0].flatten(2).transpose(1, 2)  # [B, h*w, dim] tokens of the first modality
            context = torch.cat([b.flatten(2).transpose(1, 2) for b in bottlenecks[1:]], dim=1)
            fused = self.cross(query, context).transpose(1, 2).reshape(batch, dim, height, width)
            fused = self.merge(torch.cat([fused, *bottlenecks[1:]], dim=1))
            features = [torch.cat([b[0] for b in branches], 1), torch.cat([b[1] for b in branches], 1), fused]
            pixel = self.decoders[0](features) if self.decoders is not None else None
            patch = fused.mean(dim=(2, 3))
        elif self.fusion == "late":
            pixel = None
            if self.decoders is not None:
                pixel = torch.cat([d(b) for d, b in zip(self.decoders, branches, strict=True)], dim=1)
            patch = torch.cat([b[2].mean(dim=(2, 3)) for b in branches], dim=1)
        else:
            pixel = self.decoders[0](branches[0]) if self.decoders is not None else None
            patch = branches[0][2].mean(dim=(2, 3))
        outputs = {}
        for task, head in self.heads.items():
            if task == "seg":
                outputs[task] = head(pixel)
            elif task == "reg":
                outputs[task] = self.reg_scale * torch.softmax(head(patch), dim=1)  # fractions (>= 0, sum 1) x scale
            else:
                outputs[task] = head(patch)
        return outputs


# ----------------------------------------------------------------------------------------------------------
# Multitask loss: fixed, uncertainty and KPI-driven task weights
# ----------------------------------------------------------------------------------------------------------


def uncertainty_weighted_sum(
    losses: torch.Tensor, log_variances: torch.Tensor, regression: torch.Tensor | Sequence[bool]
) -> torch.Tensor:
    """Kendall et al. (2018): ``sum_t c_t exp(-s_t) L_t + s_t / 2`` with ``s_t = log sigma_t^2``.

    ``c_t`` is 1/2 for a regression task (Gaussian likelihood) and 1 for a classification task (softmax
    likelihood). Minimising over ``s_t`` gives ``sigma_t^2 = L_t`` (regression) or ``2 L_t`` (classification):
    a task with a large loss is down-weighted, and ``s_t / 2`` stops every weight from shrinking to zero.
    """
    factor = torch.where(torch.as_tensor(regression, device=losses.device), 0.5, 1.0)
    return (factor * torch.exp(-log_variances) * losses + 0.5 * log_variances).sum()


def focal_task_weight(kpi: float | torch.Tensor, gamma: float = 1.0, eps: float = 1e-3) -> torch.Tensor:
    """KPI-driven weight ``-(1 - k)^gamma log k`` of a task whose key performance indicator is ``k`` in 0..1.

    A task that goes badly (small ``k``) gets a large weight, one that is solved (``k`` near 1) a weight near 0.
    """
    k = torch.as_tensor(kpi, dtype=torch.float32).clamp(eps, 1 - eps)
    return -((1 - k) ** gamma) * torch.log(k)


def sample_iou(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean IoU of each sample's label map ``[B, H, W]`` (``[B]``), over the classes in its target or prediction."""
    p = F.one_hot(predicted.flatten(1), num_classes).bool()
    t = F.one_hot(target.flatten(1), num_classes).bool()
    intersection, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    present = union > 0
    return torch.where(present, intersection / union.clamp_min(1), 0.0).sum(1) / present.sum(1)


def batch_kpis(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    iou_threshold: float = 0.5,
    mae_threshold: float = 0.05,
) -> dict[str, float]:
    """Per-task KPIs of one batch, in 0..1 (after Hanna et al., 2021): the share of samples whose mean IoU is at
    least ``iou_threshold`` (seg), the accuracy (cls), the share of samples whose mean absolute error is at most
    ``mae_threshold``, in the target's units (reg)."""
    kpis = {}
    for task, output in outputs.items():
        target = targets[task]
        if task == "reg":
            kpis[task] = float(((output - target).abs().mean(dim=1) <= mae_threshold).float().mean())
        elif task == "seg":
            kpis[task] = float((sample_iou(output.argmax(1), target, output.shape[1]) >= iou_threshold).float().mean())
        else:
            kpis[task] = float((output.argmax(1) == target).float().mean())
    return kpis


def default_task_loss(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for ``seg`` and ``cls``; for ``reg`` the mean squared error, in the target's units squared."""
    return F.mse_loss if task == "reg" else F.cross_entropy


class MultitaskLoss(nn.Module):
    """The weighted sum ``sum_t lambda_t L_t`` of per-task losses.

    Args:
        tasks: the task names, in the order of the target tuple, e.g. ``("seg", "cls", "reg")``.
        weighting: ``fixed`` (``weights``), ``uncertainty`` (learned log variances, Kendall et al., 2018; add
            this module's parameters to the optimizer) or ``kpi`` (focal weights from a running average of
            each task's KPI, Hanna et al., 2021, applied to each loss divided by its running average, so that
            a task's units do not count; see :func:`batch_kpis`).
        weights: fixed weights per task (default: all 1).
        gamma: the focal exponent of ``kpi`` weighting.
        momentum: how fast the running averages of the KPIs and losses follow each batch (``alpha`` in Hanna et al.).
        losses: a loss function per task (default: :func:`default_task_loss`).
        iou_threshold, mae_threshold: the KPI thresholds of ``seg`` and ``reg`` (see :func:`batch_kpis`).
        references: a reference loss per task, e.g. that of a know-nothing prediction (``log K`` for a
            cross-entropy over K classes, the targets' variance for a mean squared error). With them, a call
            without gradients (validation, testing) returns the **unweighted** criterion
            ``mean_t L_t / reference_t`` instead of the weighted sum: model selection then does not move with
            the task weights.

    Called as ``loss(outputs, targets)`` with ``outputs`` a dict from :class:`FusionNet` and ``targets`` a tuple
    in the order of ``tasks``. Running averages are only updated when gradients are on (training, not
    evaluation). ``last_losses`` and ``current_weights()`` tell what the last call did.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weighting: str = "fixed",
        weights: dict[str, float] | None = None,
        gamma: float = 1.0,
        momentum: float = 0.1,
        losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None,
        iou_threshold: float = 0.5,
        mae_threshold: float = 0.05,
        references: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if weighting not in ("fixed", "uncertainty", "kpi"):
            raise ValueError(f"weighting {weighting!r} is not one of fixed, uncertainty, kpi.")
        if references is not None and set(references) != set(tasks):
            raise ValueError(f"references must give one value per task {tuple(tasks)}, got {sorted(references)}.")
        self.tasks, self.weighting, self.gamma, self.momentum = tuple(tasks), weighting, gamma, momentum
        self.iou_threshold, self.mae_threshold = iou_threshold, mae_threshold
        self.losses = {t: (losses or {}).get(t, default_task_loss(t)) for t in self.tasks}
        self.fixed = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}
        self.references = None if references is None else torch.tensor([float(references[t]) for t in self.tasks])
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks))) if weighting == "uncertainty" else None
        self.register_buffer("kpi", torch.full((len(self.tasks),), 0.5))
        self.register_buffer("loss_average", torch.full((len(self.tasks),), math.nan))
        self.last_losses: dict[str, float] = {}

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss gets now (uncertainty: ``c_t exp(-s_t)``; kpi: the focal weight over the
        task's running loss average)."""
        if self.weighting == "fixed":
            return dict(self.fixed)
        if self.weighting == "uncertainty":
            factors = [0.5 if t == "reg" else 1.0 for t in self.tasks]
            values = torch.exp(-self.log_variances.detach()).cpu()
            return {t: f * float(v) for t, f, v in zip(self.tasks, factors, values, strict=True)}
        focal = focal_task_weight(self.kpi.cpu(), self.gamma)
        scale = torch.nan_to_num(self.loss_average.cpu(), nan=1.0).clamp_min(1e-8)
        return {t: float(w) for t, w in zip(self.tasks, focal / scale, strict=True)}

    def forward(self, outputs: dict[str, torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        targets = dict(zip(self.tasks, targets, strict=True))
        losses = torch.stack([self.losses[t](outputs[t].float(), targets[t]) for t in self.tasks])
        self.last_losses = {t: float(v) for t, v in zip(self.tasks, losses.detach(), strict=True)}
        if self.references is not None and not torch.is_grad_enabled():
            return (losses / self.references.to(losses.device)).mean()
        if self.weighting == "uncertainty":
            return uncertainty_weighted_sum(losses, self.log_variances, [t == "reg" for t in self.tasks])
        if self.weighting == "kpi" and torch.is_grad_enabled():
            with torch.no_grad():
                now = batch_kpis({t: outputs[t].detach() for t in self.tasks}, targets, self.iou_threshold,
                                 self.mae_threshold)  # fmt: skip
                fresh = torch.tensor([now[t] for t in self.tasks], device=self.kpi.device)
                self.kpi.mul_(1 - self.momentum).add_(self.momentum * fresh)
                first = torch.isnan(self.loss_average)
                self.loss_average.copy_(torch.where(first, losses.detach(), self.loss_average))
                self.loss_average.mul_(1 - self.momentum).add_(self.momentum * losses.detach())
        weights = torch.tensor([self.current_weights()[t] for t in self.tasks], device=losses.device)
        return (weights * losses).sum()


# ----------------------------------------------------------------------------------------------------------
# Uncertainty with Monte Carlo dropout
# ----------------------------------------------------------------------------------------------------------


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Evaluation mode (batch norm uses its running statistics) with every dropout layer switched on."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout):
            module.train()
    return model


@torch.no_grad()
def mc_dropout_predict(
    model: nn.Module, inputs: Sequence[torch.Tensor], task: str = "seg", samples: int = 20, dropout: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean class probabilities over ``samples`` stochastic passes, and their standard deviation.

    With ``dropout=False`` the passes are deterministic (plain evaluation): the spread is zero. The model is
    left in evaluation mode.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}.")
    if dropout:
        enable_mc_dropout(model)
    else:
        model.eval()
    probabilities = torch.stack([torch.softmax(model(*inputs)[task].float(), dim=1) for _ in range(samples)])
    model.eval()
    return probabilities.mean(0), probabilities.std(0, correction=0)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, steps: int = 50) -> float:
    """Temperature scaling (Guo et al., 2017): the ``T > 0`` that minimises the cross-entropy of ``logits / T``.

    Fit it on held-out data (validation), never on the test set. ``T > 1`` softens an over-confident model's
    probabilities, ``T < 1`` sharpens an under-confident one's; the predicted classes do not change.
    ``logits``: ``[N, K, ...]``, ``target``: class indices ``[N, ...]``.
    """
    logits, log_temperature = logits.detach().float(), torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=steps)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())


def predictive_entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy ``-sum_k p_k log p_k`` (nats) of mean class probabilities: 0 when sure, log K when clueless."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim)


def accuracy_coverage(
    correct: np.ndarray, uncertainty: np.ndarray, coverages: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0)
) -> np.ndarray:
    """Accuracy of the most certain predictions: for each coverage ``c``, keep the share ``c`` with the lowest
    ``uncertainty`` and return the fraction of them that is ``correct``."""
    correct = np.asarray(correct, dtype=bool).ravel()
    uncertainty = np.asarray(uncertainty, dtype=np.float64).ravel()
    if correct.shape != uncertainty.shape or correct.size == 0:
        raise ValueError(f"correct and uncertainty must be non-empty and alike: {correct.shape}, {uncertainty.shape}")
    order = np.argsort(uncertainty, kind="stable")
    cumulative = np.cumsum(correct[order])
    result = []
    for coverage in coverages:
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage {coverage} must be in (0, 1].")
        kept = max(1, math.ceil(coverage * correct.size))
        result.append(cumulative[kept - 1] / kept)
    return np.array(result)
