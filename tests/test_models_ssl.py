"""Self-supervised pieces: NT-Xent against a slow reference, EMA, BYOL loss, MAE, views, pretrained U-Net."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.models.ssl import (
    SSL_FIELD_RECIPE,
    CropSampler,
    MaskedAutoencoder,
    MLPHead,
    UNetEncoder,
    byol_loss,
    byol_momentum,
    ema_update,
    embedding_std,
    hypercolumns,
    load_or_train_ssl_field_unet,
    nt_xent,
    read_pretraining_losses,
    ssl_field_unet_path,
)
from course_utils.models.unet import FIELD_UNET_RECIPE, UNet


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent written pair by pair from the formula, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        numerator = math.exp(float(z[i] @ z[j]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(n2) if k != i)
        total += -math.log(numerator / denominator)
    return total / n2


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_equals_reference(temperature: float) -> None:
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    assert float(nt_xent(z1, z2, temperature)) == pytest.approx(nt_xent_loop(z1, z2, temperature), rel=1e-5)


def test_nt_xent_rewards_matching_views_and_checks_inputs() -> None:
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    aligned = nt_xent(z, z * 3.0, 0.1)  # same direction: scale does not matter after normalisation
    shuffled = nt_xent(z, z.roll(1, dims=0), 0.1)
    assert aligned < 0.05 < math.log(2 * 8 - 1) < shuffled
    # all embeddings identical (collapse): every pair looks the same, the loss is log(2N - 1)
    assert float(nt_xent(torch.ones(4, 3), torch.ones(4, 3), 0.5)) == pytest.approx(math.log(7), rel=1e-6)
    with pytest.raises(ValueError, match="same|both"):
        nt_xent(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(4, 3), torch.ones(4, 3), 0.0)


def test_ema_update_moves_target_by_the_right_amount() -> None:
    online = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    target = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
        online[1].running_mean.fill_(5.0)
    ema_update(target, online, momentum=0.9)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))  # 0.9 * 0 + 0.1 * 1
    ema_update(target, online, momentum=0.9)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.19))  # 0.9 * 0.1 + 0.1 * 1
    assert torch.equal(target[1].running_mean, online[1].running_mean)  # buffers are copied
    assert all(p.requires_grad for p in online.parameters())
    ema_update(target, online, momentum=0.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(target, online, 1.5)


def test_byol_loss_and_momentum_schedule() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    assert float(byol_loss(p.detach(), p.detach() * 4)) == pytest.approx(0.0, abs=1e-6)
    assert float(byol_loss(p.detach(), -p.detach())) == pytest.approx(4.0)
    assert float(byol_loss(p.detach(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))) == pytest.approx(2.0)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0]], requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None  # no gradient into the target
    assert byol_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert byol_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert byol_momentum(50, 100, 0.99) == pytest.approx(0.995)


def test_embedding_std_detects_collapse() -> None:
    assert embedding_std(torch.ones(32, 8)) == pytest.approx(0.0, abs=1e-6)
    spread = embedding_std(torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)))
    assert spread == pytest.approx(1 / math.sqrt(8), rel=0.05)


def test_mae_patchify_masking_and_loss() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(in_channels=4, image_size=32, patch=8, dim=32, depth=1, heads=2, decoder_dim=16,
                            decoder_depth=1, mask_ratio=0.75)  # fmt: skip
    x = torch.randn(3, 4, 32, 32)
    patches = mae.patchify(x)
    assert patches.shape == (3, 16, 8 * 8 * 4)
    assert torch.equal(patches[0, 1].reshape(8, 8, 4).permute(2, 0, 1), x[0, :, :8, 8:16])  # row-major
    assert torch.equal(mae.unpatchify(patches), x)
    loss, prediction, mask = mae(x)
    assert prediction.shape == patches.shape and mask.shape == (3, 16)
    assert torch.equal(mask.sum(1), torch.full((3,), 12.0))  # 75 % of 16 patches hidden
    error = ((prediction.detach() - patches) ** 2).mean(-1)
    assert float(loss.detach()) == pytest.approx(float(error[mask.bool()].mean()), rel=1e-5)  # hidden patches only
    assert mae.encode(x, torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4, 32)


def test_mae_learns() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(in_channels=1, image_size=16, patch=4, dim=32, depth=1, heads=2, decoder_dim=32,
                            decoder_depth=1, mask_ratio=0.5)  # fmt: skip
    x = torch.linspace(-1, 1, 16).repeat(16, 1)[None, None].repeat(8, 1, 1, 1)  # a smooth ramp: easy to infill
    optimizer = torch.optim.Adam(mae.parameters(), lr=3e-3)
    first = float(mae(x)[0].detach())
    for _ in range(60):
        loss = mae(x)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.2 * first


def test_unet_encoder_shares_weights_and_hypercolumns() -> None:
    unet = UNet(width=4, depth=3)
    encoder = UNetEncoder(unet)
    maps = encoder.features(torch.randn(2, 4, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]
    assert encoder(torch.randn(2, 4, 32, 32)).shape == (2, encoder.out_dim) == (2, 32)
    assert encoder.encoder[0] is unet.encoder[0] and encoder.bottleneck is unet.bottleneck
    columns = hypercolumns(maps)
    assert columns.shape == (2, 60, 32, 32)
    assert torch.allclose(columns[:, :4], maps[0])  # full-resolution level kept as it is
    assert MLPHead(32, 16, 8)(torch.randn(5, 32)).shape == (5, 8)


def test_crop_sampler_views() -> None:
    image = torch.arange(2 * 40 * 40, dtype=torch.float32).reshape(2, 40, 40)
    sampler = CropSampler([image], 16, brightness=0.0, contrast=0.0, band_jitter=0.0, noise=0.0, seed=3)
    v1, v2 = sampler.pairs(5)
    assert v1.shape == v2.shape == (5, 2, 16, 16)
    # without radiometric changes every view is a rotated/flipped window of the image: values are image values
    assert set(v1.flatten().tolist()) <= set(image.flatten().tolist())
    assert not torch.equal(v1, v2)
    with pytest.raises(ValueError, match="at least"):
        CropSampler([torch.zeros(2, 20, 20)], 16)


def test_load_or_train_ssl_field_unet(course_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setitem(SSL_FIELD_RECIPE, "smoke", SSL_FIELD_RECIPE["smoke"] | {"steps": 3})
    model = load_or_train_ssl_field_unet("smoke", seed=0, progress=False)
    assert ssl_field_unet_path("smoke", 0).is_file()
    assert ssl_field_unet_path("smoke", 0, data_seed=1) != ssl_field_unet_path("smoke", 0)  # keyed by the data
    assert read_pretraining_losses("smoke", 0) is not None and len(read_pretraining_losses("smoke", 0)) == 3
    assert isinstance(model, UNet) and not model.training
    assert model.head.in_channels == FIELD_UNET_RECIPE["smoke"]["width"] and model.depth == 3
    mean, std = model.stats
    assert mean.shape == (4,) and np.all(std > 0) and 300 < mean[0] < 3000  # stored reflectance units
    fresh = UNet(width=model.head.in_channels)
    assert not torch.equal(model.encoder[0][0].weight, fresh.encoder[0][0].weight)
    state = torch.random.get_rng_state()
    again = load_or_train_ssl_field_unet("smoke", seed=0, progress=False)  # loaded, same decoder from the seed
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = load_or_train_ssl_field_unet("smoke", seed=1, progress=False)
    assert not torch.equal(other.head.weight, model.head.weight)
