"""Self-supervised learning: the losses, heads and pretraining recipe of notebook 04.

Notebook 04 writes each idea out once; later notebooks import these reference versions:

* :func:`nt_xent`: the normalised-temperature cross-entropy (InfoNCE) loss of SimCLR (Chen et al., 2020);
  :class:`MLPHead` is its projection head and BYOL's predictor.
* :func:`ema_update` and :func:`byol_loss`: the exponential-moving-average target network and the
  normalised regression loss of BYOL (Grill et al., 2020), which needs no negative pairs.
* :class:`MaskedAutoencoder`: a small MAE (He et al., 2022) on the transformer blocks of
  :mod:`course_utils.models.vit`: most patches are hidden, the encoder sees the rest, a light decoder
  reconstructs the hidden ones.
* :class:`UNetEncoder` and :func:`hypercolumns`: the encoder half of the field U-Net as a feature
  extractor, and its per-pixel multi-scale features for a linear probe.
* :class:`CropSampler`: pairs of augmented views cut from unlabelled images, with augmentations that
  respect what a multispectral pixel measures (see its docstring).
* :func:`load_or_train_ssl_field_unet`: a field U-Net whose encoder holds SimCLR weights pretrained on
  unlabelled chips and scenes of both regions (:data:`SSL_FIELD_RECIPE`), loaded from
  :func:`course_utils.config.checkpoint_dir` or pretrained now; notebook 07 starts from it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from course_utils.config import checkpoint_dir, get_device, get_mode, seed_everything
from course_utils.data.fields import BANDS, ensure_fields
from course_utils.data.store import band_statistics, read_catalog
from course_utils.files import atomic_path
from course_utils.geo import read_raster
from course_utils.models.unet import CLASS_NAMES, FIELD_UNET_RECIPE, UNet, release_memory
from course_utils.models.vit import PatchEmbedding, TransformerBlock, _init_weights
from course_utils.train import autocast, keyed_path, load_or_train

#: SimCLR pretraining of the field U-Net's encoder in each mode. ``width`` is the field U-Net's
#: (:data:`course_utils.models.unet.FIELD_UNET_RECIPE`), so the pretrained encoder drops into it.
SSL_FIELD_RECIPE: dict[str, dict[str, Any]] = {
    "smoke": {"width": FIELD_UNET_RECIPE["smoke"]["width"], "crop": 32, "batch_size": 16, "steps": 12, "lr": 2e-3,
              "temperature": 0.2, "projection_dim": 32, "brightness": 0.05, "contrast": 0.05, "band_jitter": 0.01},
    "lite": {"width": FIELD_UNET_RECIPE["lite"]["width"], "crop": 32, "batch_size": 64, "steps": 250, "lr": 2e-3,
             "temperature": 0.2, "projection_dim": 64, "brightness": 0.05, "contrast": 0.05, "band_jitter": 0.01},
    "full": {"width": FIELD_UNET_RECIPE["full"]["width"], "crop": 64, "batch_size": 256, "steps": 3000, "lr": 2e-3,
             "temperature": 0.2, "projection_dim": 128, "brightness": 0.05, "contrast": 0.05, "band_jitter": 0.01},
}  # fmt: skip

#: The splits whose images (never their labels) SimCLR pretrains on, in both regions; the test chips stay unseen.
#: The photometric augmentations are weak (a few per cent): the field classes differ mostly in their spectra.
PRETRAINING_SPLITS = ("train", "scene")


# ----------------------------------------------------------------------------------------------- losses


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two batches of embeddings ``[N, D]`` whose rows ``i`` are positive pairs.

    The ``2N`` embeddings are L2-normalised; for each one, the other view of the same sample is the
    positive and the other ``2N - 2`` are negatives:
    ``l_i = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )`` with cosine similarities ``s``; the loss is
    the mean of ``l_i`` over all ``2N`` anchors.

    Raises:
        ValueError: when the shapes differ, a batch has fewer than 2 samples or ``temperature <= 0``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if len(z1) < 2:
        raise ValueError("NT-Xent needs at least 2 samples per batch (the others are the negatives)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's loss ``2 - 2 cos(p, z)``: mean squared distance of the L2-normalised prediction and target.

    The target is detached: gradients flow only into the online network.
    """
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Move the target network towards the online one: ``theta_t <- m theta_t + (1 - m) theta_o``.

    Parameters move by the moving average; buffers (batch-norm statistics) are copied. ``momentum`` 1
    freezes the target, 0 makes it a copy of the online network.

    Raises:
        ValueError: for a momentum outside [0, 1] or networks with different parameters.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target_params, online_params = list(target.parameters()), list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks must have the same parameters (make one a deepcopy)")
    for t, o in zip(target_params, online_params, strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def byol_momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """BYOL's momentum schedule: from ``base`` at step 0 up to 1 at the end, along a cosine."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised embeddings ``[N, D]``.

    Near 0 the embeddings have collapsed to one point; for well-spread embeddings it is near ``1/sqrt(D)``.
    """
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())


# ----------------------------------------------------------------------------------------------- heads


class MLPHead(nn.Sequential):
    """``Linear -> BatchNorm -> ReLU -> Linear``: SimCLR's projection head and BYOL's projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class UNetEncoder(nn.Module):
    """The encoder and bottleneck of a :class:`~course_utils.models.unet.UNet`, sharing its modules.

    ``features(x)`` returns the feature map of every encoder level (before pooling) and of the bottleneck;
    ``forward(x)`` their global average: the bottleneck's ``[B, width * 2**depth]`` vector. Training this
    module trains the U-Net's encoder in place.
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.encoder, self.pool, self.bottleneck = unet.encoder, unet.pool, unet.bottleneck
        self.out_dim = unet.head.in_channels * 2**unet.depth
        self.channels = [unet.head.in_channels * 2**level for level in range(unet.depth + 1)]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for block in self.encoder:
            x = block(x)
            maps.append(x)
            x = self.pool(x)
        maps.append(self.bottleneck(x))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].mean(dim=(-2, -1))


def hypercolumns(maps: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-pixel multi-scale features: every map bilinearly upsampled to ``size`` (default: the first map's)
    and concatenated along channels, ``[B, sum(C), H, W]`` (Hariharan et al., 2015)."""
    size = size or tuple(maps[0].shape[-2:])
    out = maps[0].new_empty((maps[0].shape[0], sum(m.shape[1] for m in maps), *size))
    start = 0
    for m in maps:  # filled level by level: one upsampled map at a time in memory besides the result
        out[:, start : start + m.shape[1]] = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        start += m.shape[1]
    return out


# ----------------------------------------------------------------------------------------------- MAE


class MaskedAutoencoder(nn.Module):
    """A small masked autoencoder for multispectral images (He et al., 2022).

    The image is cut into ``patch x patch`` patches; a random ``mask_ratio`` of them is hidden. The encoder
    (patch embedding, positions, transformer blocks) sees only the visible patches; a light decoder gets
    their encodings plus a shared learned mask token at every hidden position and predicts all pixels of
    every patch. The loss is the mean squared error on the hidden patches only.

    ``forward(x)`` returns ``(loss, prediction [B, N, patch*patch*C], mask [B, N] with 1 = hidden)``.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int = 64,
        patch: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        decoder_dim: int = 48,
        decoder_depth: int = 2,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size={image_size} is not a multiple of patch={patch}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.in_channels, self.patch, self.grid, self.mask_ratio = in_channels, patch, image_size // patch, mask_ratio
        tokens = self.grid**2
        self.embed = PatchEmbedding(in_channels, dim, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, 2.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, tokens, decoder_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(TransformerBlock(decoder_dim, heads, 2.0) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * in_channels)
        self.apply(_init_weights)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` to ``[B, N, patch*patch*C]``, patches in row-major order."""
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`patchify`."""
        b, p, g, c = len(patches), self.patch, self.grid, self.in_channels
        x = patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def random_masking(self, n: int, tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices ``[B, keep]`` of the visible tokens, and the mask ``[B, N]`` (1 = hidden), random per sample."""
        keep = max(1, round(tokens * (1 - self.mask_ratio)))
        order = torch.rand(n, tokens, device=device).argsort(dim=1)
        visible = order[:, :keep]
        mask = torch.ones(n, tokens, device=device)
        mask.scatter_(1, visible, 0.0)
        return visible, mask

    def encode(self, images: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Encodings ``[B, keep, dim]`` of the visible patches (all patches when ``visible`` is None)."""
        tokens = self.embed(images) + self.pos_embed
        if visible is not None:
            tokens = torch.gather(tokens, 1, visible[..., None].expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, tokens = len(images), self.grid**2
        visible, mask = self.random_masking(b, tokens, images.device)
        encoded = self.decoder_embed(self.encode(images, visible))
        full = self.mask_token.expand(b, tokens, -1).clone()
        full.scatter_(1, visible[..., None].expand(-1, -1, full.shape[-1]), encoded)
        x = full + self.decoder_pos
        for block in self.decoder_blocks:
            x = block(x)
        prediction = self.decoder_pred(self.decoder_norm(x))
        error = ((prediction - self.patchify(images)) ** 2).mean(dim=-1)
        loss = (error * mask).sum() / mask.sum()
        return loss, prediction, mask


# ----------------------------------------------------------------------------------------------- views


class CropSampler:
    """Pairs of augmented views of random windows of unlabelled images ``[C, H, W]`` (normalised).

    Each pair starts from a window ``1.5 crop`` wide at a random place (images are drawn in proportion
    to their area); the two views are two ``crop``-sized windows inside it (they overlap), each with its
    own dihedral transform (rotations by 90 degrees and flips: a nadir image has no "up"), brightness and
    contrast change (illumination, haze, sensor gain), a small independent gain per band (calibration
    differences, at most ``band_jitter``), and Gaussian noise. It does not shift hues, swap or drop bands,
    or turn images grey: in a multispectral image the ratios between bands (NDVI, soil colour) are the
    signal, and an encoder trained to ignore them would ignore the crops.
    """

    def __init__(
        self,
        images: list[torch.Tensor],
        crop: int,
        *,
        brightness: float = 0.3,
        contrast: float = 0.25,
        band_jitter: float = 0.05,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        region = int(round(1.5 * crop))
        too_small = [tuple(im.shape[-2:]) for im in images if min(im.shape[-2:]) < region]
        if not images or too_small:
            raise ValueError(f"need images of at least {region}x{region} pixels for crop={crop}; got {too_small}")
        self.images, self.crop, self.region = images, crop, region
        self.brightness, self.contrast, self.band_jitter, self.noise = brightness, contrast, band_jitter, noise
        areas = np.array([im.shape[-1] * im.shape[-2] for im in images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def windows(self, n: int) -> torch.Tensor:
        """``n`` random windows ``[n, C, 1.5 crop, 1.5 crop]``."""
        out = []
        for index in self.rng.choice(len(self.images), size=n, p=self.weights):
            image = self.images[index]
            top = int(self.rng.integers(0, image.shape[-2] - self.region + 1))
            left = int(self.rng.integers(0, image.shape[-1] - self.region + 1))
            out.append(image[:, top : top + self.region, left : left + self.region])
        return torch.stack(out)

    def view(self, windows: torch.Tensor) -> torch.Tensor:
        """One augmented ``crop``-sized view of every window."""
        views = []
        for window in windows:
            top, left = (int(v) for v in self.rng.integers(0, self.region - self.crop + 1, size=2))
            x = window[:, top : top + self.crop, left : left + self.crop]
            x = torch.rot90(x, int(self.rng.integers(4)), (1, 2))
            views.append(torch.flip(x, (2,)) if self.rng.random() < 0.5 else x)
        x = torch.stack(views)
        n, c = x.shape[:2]
        uniform = lambda size, half: torch.from_numpy(self.rng.uniform(-half, half, size).astype(np.float32))  # noqa: E731
        mean = x.mean(dim=(-2, -1), keepdim=True)
        contrast = 1 + uniform((n, 1, 1, 1), self.contrast)
        gain = 1 + uniform((n, c, 1, 1), self.band_jitter)
        x = (x - mean) * contrast * gain + mean + uniform((n, 1, 1, 1), self.brightness)
        return x + self.noise * torch.from_numpy(self.rng.standard_normal(x.shape).astype(np.float32))

    def pairs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views ``[n, C, crop, crop]`` each; row ``i`` of both comes from the same window."""
        windows = self.windows(n)
        return self.view(windows), self.view(windows)


# ----------------------------------------------------------------------------------------------- pretraining


def pretraining_images(
    mode: str | None = None, data_seed: int = 0, splits: tuple[str, ...] = PRETRAINING_SPLITS
) -> tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    """The unlabelled field images of both regions (chips and scenes of ``splits``) normalised with their
    own per-band statistics, and those statistics ``(mean, std)`` in stored units. Labels are not read."""
    folder = ensure_fields(mode or get_mode(), data_seed)
    catalog = read_catalog(folder)
    catalog = catalog[catalog["split"].isin(splits)]
    images: list[Any] = [read_raster(folder / path)[0] for path in catalog["image"]]
    mean, std = band_statistics(images)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for i, stored in enumerate(images):  # in place: each stored image is freed as soon as it is normalised
        images[i] = torch.from_numpy((stored.astype(np.float32) - mean[:, None, None]) / std[:, None, None])
    return images, (mean, std)


class SimCLR(nn.Module):
    """An encoder (images to vectors) followed by a projection head; ``forward`` returns the projections."""

    def __init__(self, encoder: nn.Module, encoder_dim: int, projection_dim: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder_dim, 2 * encoder_dim, projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def pretrain_simclr(
    model: SimCLR,
    sampler: CropSampler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    temperature: float,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """SimCLR: ``steps`` AdamW steps (cosine schedule, weight decay 1e-4) on NT-Xent of view pairs; the losses."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr / 20)
    losses = []
    bar = tqdm(range(steps), desc="SimCLR steps", disable=not progress)
    for step in bar:
        view1, view2 = (v.to(device, non_blocking=True) for v in sampler.pairs(batch_size))
        with autocast(device):
            z1, z2 = model(view1), model(view2)
        loss = nt_xent(z1, z2, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())  # kept on the device: reading it every step would wait for the GPU
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
    bar.close()
    return torch.stack(losses).float().cpu().tolist()


def ssl_field_unet_recipe(mode: str, seed: int = 0, data_seed: int = 0) -> dict[str, Any]:
    """Every setting that changes the pretrained weights: :data:`SSL_FIELD_RECIPE` of the mode, the images it
    sees (:data:`PRETRAINING_SPLITS` of both regions of the field data of ``data_seed``) and the seed."""
    return SSL_FIELD_RECIPE[mode] | {
        "mode": mode, "seed": seed, "data_seed": data_seed, "splits": list(PRETRAINING_SPLITS), "regions": "both"
    }  # fmt: skip


def ssl_field_unet_path(mode: str, seed: int = 0, data_seed: int = 0) -> Path:
    """Checkpoint of the SimCLR-pretrained field U-Net of a mode, pretraining seed and data seed, keyed by its
    recipe; its :attr:`~pathlib.Path.stem` ends with the recipe key, which downstream recipes record."""
    return keyed_path(_ssl_base(mode, seed), ssl_field_unet_recipe(mode, seed, data_seed))


def _ssl_base(mode: str, seed: int) -> Path:
    return checkpoint_dir() / f"ssl_simclr_field_unet_{mode}_seed{seed}.pt"


def read_pretraining_losses(mode: str, seed: int = 0, data_seed: int = 0) -> list[float] | None:
    """The SimCLR loss per step recorded when the checkpoint was pretrained (``None`` if not recorded)."""
    file = ssl_field_unet_path(mode, seed, data_seed).with_suffix(".losses.json")
    return json.loads(file.read_text()) if file.is_file() else None


def load_or_train_ssl_field_unet(
    mode: str | None = None,
    seed: int = 0,
    *,
    data_seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
) -> UNet:
    """A field UNet (4 bands, 3 classes, width ``FIELD_UNET_RECIPE[mode]["width"]``, depth 3) whose encoder
    and bottleneck hold SimCLR weights pretrained on unlabelled chips and scenes of both regions.

    The weights are loaded from ``ssl_simclr_field_unet_<mode>_seed<seed>-<recipe key>.pt`` under
    :func:`course_utils.config.checkpoint_dir`, or pretrained now with :data:`SSL_FIELD_RECIPE` (seeded by
    ``seed``) on the unlabelled images of the field data of ``data_seed`` and saved. The decoder and head
    are freshly initialised from ``seed`` (the global random
    state is left as it was). ``model.stats`` holds the per-band normalisation statistics of pretraining;
    normalise inputs with them (``FieldChipDataset(..., stats=model.stats)``). Returned on the CPU, in eval mode.
    """
    mode = mode or get_mode()
    recipe = SSL_FIELD_RECIPE[mode]
    path = ssl_field_unet_path(mode, seed, data_seed)
    width = recipe["width"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(in_channels=len(BANDS), classes=len(CLASS_NAMES), width=width, depth=3)

    def pretrain(net: UNet) -> None:
        seed_everything(seed)
        images, stats = pretraining_images(mode, data_seed)
        net.set_stats(stats)
        encoder = UNetEncoder(net)
        simclr = SimCLR(encoder, encoder.out_dim, recipe["projection_dim"])
        sampler = CropSampler(images, recipe["crop"], brightness=recipe["brightness"], contrast=recipe["contrast"],
                              band_jitter=recipe["band_jitter"], seed=seed)  # fmt: skip
        losses = pretrain_simclr(
            simclr, sampler, steps=recipe["steps"],
            batch_size=recipe["batch_size"], lr=recipe["lr"], temperature=recipe["temperature"],
            device=device or get_device(), progress=progress,
        )  # fmt: skip
        net.cpu()
        with atomic_path(path.with_suffix(".losses.json")) as tmp:
            tmp.write_text(json.dumps(losses))

    load_or_train(model, _ssl_base(mode, seed), pretrain, ssl_field_unet_recipe(mode, seed, data_seed))
    release_memory()  # the pretraining's images and activations are garbage now: hand their memory back
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = UNet(in_channels=len(BANDS), classes=len(CLASS_NAMES), width=width, depth=3)
    for name in ("up", "decoder", "head"):  # the decoder was not pretrained: start it fresh from the seed
        getattr(model, name).load_state_dict(getattr(fresh, name).state_dict())
    return model.cpu().eval()


def copy_encoder(source: UNet, target: UNet) -> None:
    """Copy encoder, bottleneck and normalisation statistics of one U-Net into another of the same size."""
    for name in ("encoder", "bottleneck"):
        getattr(target, name).load_state_dict(copy.deepcopy(getattr(source, name).state_dict()))
    target.set_stats(source.stats)
