"""Transfer learning and cheap domain adaptation for the field U-Net (notebook 07).

Notebook 07 carries the U-Net of notebook 02 from one region to another. What it needs beyond the
training loop of :mod:`course_utils.train` lives here:

* :func:`unet_parts` and :func:`param_groups`: the U-Net's parameters split into ``encoder`` (the
  contracting path and the bottleneck), ``decoder`` (transpose convolutions and decoder blocks) and
  ``head`` (the final 1x1 convolution), one optimiser group per part with its own learning rate.
  A learning rate of 0 freezes a part (``requires_grad=False``): frozen encoder, decoder-only or
  full fine-tuning with *discriminative* learning rates are all one dictionary.
* :func:`fine_tune`: a fixed number of optimisation steps on a (small) labelled dataset, AdamW with
  those groups and a cosine schedule; no validation split is assumed (with a few labelled chips there
  is none to spare).
* :func:`reset_head`: a freshly initialised class head, as for a new task.
* :func:`adapt_batchnorm`: AdaBN (Li et al., 2016): re-estimate every batch-norm layer's running mean
  and variance on unlabelled images of the new domain.
* :func:`band_quantiles`, :func:`match_histograms` and :class:`HistogramMatch`: per-band histogram
  matching of one domain's images to another's distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from course_utils.models.unet import release_memory
from course_utils.train import autocast, split_batch

PARTS = ("encoder", "decoder", "head")


def unet_parts(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters of a :class:`course_utils.models.unet.UNet` by part: encoder, decoder, head.

    ``encoder`` holds the contracting path and the bottleneck, ``decoder`` the transpose convolutions and
    the decoder blocks, ``head`` the final 1x1 convolution. Every parameter is in exactly one part.

    Raises:
        TypeError: if the model lacks the U-Net's ``encoder``, ``bottleneck``, ``up``, ``decoder``, ``head``.
    """
    needed = ("encoder", "bottleneck", "up", "decoder", "head")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(f"expected a course UNet with {needed}; {type(model).__name__} lacks {missing}")
    parts = {
        "encoder": [*model.encoder.parameters(), *model.bottleneck.parameters()],
        "decoder": [*model.up.parameters(), *model.decoder.parameters()],
        "head": list(model.head.parameters()),
    }
    if sum(len(p) for p in parts.values()) != len(list(model.parameters())):
        raise TypeError("the model has parameters outside encoder, bottleneck, up, decoder and head")
    return parts


def param_groups(model: nn.Module, lrs: Mapping[str, float]) -> list[dict[str, Any]]:
    """Optimiser parameter groups with one learning rate per U-Net part; a part with lr 0 is frozen.

    Args:
        model: a course UNet.
        lrs: learning rate of ``encoder``, ``decoder`` and ``head`` (all three keys required).

    Returns:
        ``[{"params": [...], "lr": lr, "name": part}, ...]`` for the parts that train. The parameters of
        frozen parts get ``requires_grad=False``, the others ``True``.
    """
    unknown, missing = set(lrs) - set(PARTS), set(PARTS) - set(lrs)
    if unknown or missing:
        raise ValueError(f"lrs needs exactly the keys {PARTS}; unknown {sorted(unknown)}, missing {sorted(missing)}")
    if any(lr < 0 for lr in lrs.values()):
        raise ValueError(f"learning rates must be >= 0, got {dict(lrs)}")
    groups = []
    for part, params in unet_parts(model).items():
        trains = lrs[part] > 0
        for p in params:
            p.requires_grad_(trains)
        if trains:
            groups.append({"params": params, "lr": float(lrs[part]), "name": part})
    if not groups:
        raise ValueError("every learning rate is 0: nothing would train")
    return groups


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (after :func:`param_groups` has frozen some parts)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def reset_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise the model's ``head`` (a convolution or linear layer) from ``seed``, in place."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.head.reset_parameters()
    torch.random.set_rng_state(generator_state)
    return model


def fine_tune(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    lrs: Mapping[str, float],
    steps: int,
    batch_size: int,
    loss_fn: nn.Module,
    device: torch.device,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_workers: int = 0,
    inputs: str = "image",
    target: str = "mask",
) -> list[float]:
    """Train a course UNet for ``steps`` optimiser steps with one learning rate per part.

    Batches are drawn with replacement (so a dataset of one chip works); the learning rates follow a
    cosine schedule from ``lrs`` down to a twentieth of them. Batch-norm layers run in training mode, so
    their running statistics follow the new data, in frozen parts too. There is no validation: the model
    after the last step is returned, in eval mode, on ``device``.

    Returns:
        The training loss of every step.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to fine-tune on")
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=steps * batch_size, generator=generator
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    model.to(device).train()
    groups = param_groups(model, lrs)
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(step, steps) / steps))
    )
    loss_fn = loss_fn.to(device)
    losses = []
    for batch in loader:
        (x,), y = split_batch(batch, inputs, target)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())  # kept on the device: no host sync per step
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    del optimizer, scheduler, loader
    release_memory()  # the activations of training are garbage now: hand their memory back
    return torch.stack(losses).float().cpu().tolist()


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    device: torch.device,
    batch_size: int = 8,
    inputs: str = "image",
) -> nn.Module:
    """AdaBN: replace every batch-norm layer's running mean and variance by those of ``dataset``.

    The statistics are reset and re-estimated as a plain average over one pass of unlabelled images
    (``momentum=None``); no weight changes. Returns the model in eval mode, on ``device``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no batch-norm layers to adapt")
    release_memory()  # hand back what earlier work freed before whole chips' activations take their share
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches of the pass
    model.to(device).train()
    for batch in torch.utils.data.DataLoader(dataset, batch_size):
        x = batch[inputs] if isinstance(batch, dict) else batch[0]
        model(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def band_quantiles(images: Sequence[np.ndarray] | np.ndarray, levels: int = 256) -> np.ndarray:
    """Per-band quantiles ``[bands, levels]`` (from 0 to 1, evenly spaced) of ``[bands, H, W]`` images.

    Nodata (0) pixels are left out.
    """
    stacked = [np.asarray(image, dtype=np.float64).reshape(np.shape(image)[0], -1) for image in images]
    pixels = np.concatenate(stacked, axis=1)
    q = np.linspace(0.0, 1.0, levels)
    return np.stack([np.quantile(band[band != 0], q) if (band != 0).any() else np.zeros(levels) for band in pixels])


def match_histograms(image: np.ndarray, source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map each band of ``image`` from the ``source`` distribution onto the ``reference`` one.

    ``source`` and ``reference`` are :func:`band_quantiles` of the two domains: a value at the source's
    quantile ``q`` becomes the reference's value at ``q`` (piecewise linear between the levels).
    """
    image = np.asarray(image, dtype=np.float32)
    if not (len(image) == len(source) == len(reference)):
        raise ValueError(f"band counts differ: image {len(image)}, source {len(source)}, reference {len(reference)}")
    q = np.linspace(0.0, 1.0, source.shape[1])
    out = np.empty_like(image)
    for band in range(len(image)):
        ranks = np.interp(image[band], source[band], q)  # where the value lies in its own distribution
        out[band] = np.interp(ranks, q, reference[band])
    return out


class HistogramMatch:
    """A sample transform: match the ``image`` to a reference domain, then normalise it with ``stats``.

    Use it on a dataset that yields *stored* values, e.g.
    ``FieldChipDataset(..., stats=(np.zeros(4), np.ones(4)), transform=HistogramMatch(src, ref, stats))``.
    """

    def __init__(
        self, source: np.ndarray, reference: np.ndarray, stats: tuple[np.ndarray, np.ndarray], key: str = "image"
    ) -> None:
        self.source, self.reference, self.key = np.asarray(source), np.asarray(reference), key
        self.mean, self.std = (np.asarray(s, dtype=np.float32).reshape(-1, 1, 1) for s in stats)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        matched = match_histograms(sample[self.key].numpy(), self.source, self.reference)
        return {**sample, self.key: torch.from_numpy((matched - self.mean) / self.std)}
