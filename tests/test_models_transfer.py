"""Tests of course_utils.models.transfer: parameter groups, fine-tuning, AdaBN, histogram matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.models.transfer import (
    HistogramMatch,
    adapt_batchnorm,
    band_quantiles,
    count_trainable,
    fine_tune,
    match_histograms,
    param_groups,
    reset_head,
    unet_parts,
)
from course_utils.models.unet import UNet


class Stripes(torch.utils.data.Dataset):
    """Tiny segmentation task: class 1 where band 0 is positive, else 0."""

    def __init__(self, n: int = 4, size: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 4, size, size, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        return {"image": image, "mask": (image[0] > 0).long()}


def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(width=4, depth=2)


def test_parts_cover_every_parameter_once() -> None:
    model = small_unet()
    parts = unet_parts(model)
    ids = [id(p) for params in parts.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for p in parts["head"]) == 4 * 3 + 3  # 1x1 conv from 4 channels to 3 classes


def test_parts_reject_other_models() -> None:
    with pytest.raises(TypeError, match="course UNet"):
        unet_parts(nn.Linear(3, 2))


def test_zero_learning_rate_freezes_a_part() -> None:
    model = small_unet()
    groups = param_groups(model, {"encoder": 0.0, "decoder": 1e-3, "head": 1e-2})
    assert [g["name"] for g in groups] == ["decoder", "head"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    frozen = sum(p.numel() for p in unet_parts(model)["encoder"])
    assert count_trainable(model) == sum(p.numel() for p in model.parameters()) - frozen
    with pytest.raises(ValueError, match="keys"):
        param_groups(model, {"encoder": 1e-3})
    with pytest.raises(ValueError, match="nothing would train"):
        param_groups(model, {"encoder": 0.0, "decoder": 0.0, "head": 0.0})


def test_fine_tune_learns_and_leaves_frozen_parts_alone() -> None:
    model = small_unet()
    encoder_before = [p.detach().clone() for p in unet_parts(model)["encoder"]]
    head_before = model.head.weight.detach().clone()
    losses = fine_tune(
        model, Stripes(), lrs={"encoder": 0.0, "decoder": 3e-2, "head": 3e-2}, steps=40, batch_size=2,
        loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
    )  # fmt: skip
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, unet_parts(model)["encoder"], strict=True))
    assert not torch.equal(head_before, model.head.weight)
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_fine_tune_on_a_single_sample() -> None:
    model = small_unet()
    losses = fine_tune(
        model, Stripes(n=1), lrs={"encoder": 1e-3, "decoder": 1e-3, "head": 1e-3}, steps=2, batch_size=3,
        loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
    )  # fmt: skip
    assert len(losses) == 2


def test_reset_head_is_seeded_and_keeps_global_rng() -> None:
    a, b = small_unet(), small_unet()
    with torch.no_grad():
        a.head.weight.fill_(5.0)
    state = torch.random.get_rng_state()
    reset_head(a, seed=3)
    reset_head(b, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.head.weight, b.head.weight)
    assert a.head.weight.abs().max() < 5.0


def test_adapt_batchnorm_matches_new_domain_statistics() -> None:
    model = nn.Sequential(nn.BatchNorm2d(2))
    scale, offset = torch.tensor([2.0, 0.5])[:, None, None], torch.tensor([3.0, -1.0])[:, None, None]
    shifted = torch.randn(64, 2, 8, 8) * scale + offset  # AdaBN works on any model with batch norms
    data = [{"image": x} for x in shifted]
    adapt_batchnorm(model, data, torch.device("cpu"), batch_size=16)
    bn = model[0]
    assert torch.allclose(bn.running_mean, shifted.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, shifted.var((0, 2, 3)), rtol=0.02)
    assert bn.momentum == 0.1 and not model.training
    out = model(shifted)
    out = out.detach()
    assert abs(float(out.mean())) < 1e-3 and abs(float(out.std()) - 1) < 0.02
    with pytest.raises(ValueError, match="no batch-norm"):
        adapt_batchnorm(nn.Linear(2, 2), data, torch.device("cpu"))


def test_histogram_matching_maps_distributions() -> None:
    rng = np.random.default_rng(0)
    source_images = [rng.normal(100, 10, (2, 32, 32)) for _ in range(3)]
    reference_images = [rng.normal(500, 50, (2, 32, 32)) for _ in range(3)]
    source, reference = band_quantiles(source_images, 101), band_quantiles(reference_images, 101)
    assert source.shape == (2, 101)
    assert np.allclose(source[:, 50], np.median(np.concatenate([i.reshape(2, -1) for i in source_images], 1), 1))
    matched = match_histograms(source_images[0], source, reference)
    assert abs(matched.mean() - 500) < 5 and abs(matched.std() - 50) < 5
    ranks_before = np.argsort(source_images[0][0].ravel())
    assert np.all(np.diff(matched[0].ravel()[ranks_before]) >= -1e-3)  # the order of values is kept
    with pytest.raises(ValueError, match="band counts"):
        match_histograms(source_images[0][:1], source, reference)


def test_histogram_match_transform_normalises() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (2, 16, 16)).astype(np.float32)
    source = band_quantiles([image], 64)
    reference = band_quantiles([rng.normal(500, 50, (2, 64, 64))], 64)
    transform = HistogramMatch(source, reference, (np.array([500.0, 500.0]), np.array([50.0, 50.0])))
    sample = transform({"image": torch.from_numpy(image), "mask": torch.zeros(16, 16)})
    assert sample["image"].dtype == torch.float32 and "mask" in sample
    assert abs(float(sample["image"].mean())) < 0.2 and abs(float(sample["image"].std()) - 1) < 0.2
