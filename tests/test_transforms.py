"""Remote-sensing augmentations: geometry keeps labels aligned, radiometry never touches masks."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from course_utils.transforms import (
    BandDropout,
    CloudSimulation,
    GaussianNoise,
    ModalityDropout,
    RandomBrightnessContrast,
    RandomCrop,
    RandomFlipRotate,
    RandomGamma,
    RandomTemporalDropout,
    RandomTemporalShift,
    SpectralJitter,
    TemporalCloudNoise,
)


def image_sample(height: int = 16, width: int = 12) -> dict[str, torch.Tensor]:
    """A 4-band image and masks with one marker pixel at (2, 3), so its position can be followed."""
    image = torch.rand(4, height, width, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(height, width, dtype=torch.long)
    image[:, 2, 3] = 10.0
    mask[2, 3] = 2
    return {"image": image, "mask": mask, "cloud": mask[None].clone().to(torch.uint8), "id": "chip-1"}


def series_sample(length: int = 20, n_real: int = 15) -> dict[str, torch.Tensor]:
    mask = torch.arange(length) < n_real
    doy = torch.where(mask, torch.arange(length) * 10 + 20, 0)
    x = torch.randn(length, 13, generator=torch.Generator().manual_seed(1)) * mask[:, None]
    return {"x": x, "doy": doy, "mask": mask, "label": torch.tensor(3)}


def marker_positions(sample: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    image_marker = tuple(torch.nonzero(sample["image"][0] == 10.0)[0].tolist())
    mask_marker = tuple(torch.nonzero(sample["mask"] == 2)[0].tolist())
    cloud_marker = tuple(torch.nonzero(sample["cloud"][0] == 2)[0].tolist())
    return [image_marker, mask_marker, cloud_marker]


def test_flip_rotate_keeps_image_and_masks_aligned_and_reaches_8_orientations() -> None:
    sample = image_sample(12, 12)
    transform = RandomFlipRotate(generator=torch.Generator().manual_seed(0))
    orientations = set()
    for _ in range(100):
        out = transform(sample)
        first, *others = marker_positions(out)
        assert all(position == first for position in others)
        assert torch.equal(torch.unique(out["mask"]), torch.tensor([0, 2]))
        orientations.add(out["image"][0].numpy().tobytes())
    assert len(orientations) == 8
    assert sample["image"][0, 2, 3] == 10.0 and out["id"] == "chip-1"  # input untouched, other keys kept


def test_flip_rotate_refuses_images_and_masks_of_different_size() -> None:
    sample = image_sample()
    sample["mask"] = sample["mask"][:8]
    with pytest.raises(ValueError, match="sizes differ"):
        RandomFlipRotate()(sample)


def test_random_crop_keeps_alignment_and_mask_values() -> None:
    torch.manual_seed(0)
    sample = image_sample(16, 12)
    sample["mask"][5:9, 4:8] = 1
    crop = RandomCrop((10, 8))
    seen_marker = 0
    for _ in range(50):
        out = crop(sample)
        assert out["image"].shape == (4, 10, 8) and out["mask"].shape == (10, 8) and out["cloud"].shape == (1, 10, 8)
        assert set(torch.unique(out["mask"]).tolist()) <= {0, 1, 2}
        assert torch.equal(out["image"][0] == 10.0, out["mask"] == 2)
        seen_marker += bool((out["mask"] == 2).any())
    assert 0 < seen_marker < 50
    with pytest.raises(ValueError, match="smaller size"):
        RandomCrop(32)(sample)


def test_geometric_transforms_keep_tv_tensor_types() -> None:
    sample = image_sample()
    sample["image"], sample["mask"] = tv_tensors.Image(sample["image"]), tv_tensors.Mask(sample["mask"])
    out = RandomCrop(8)(RandomFlipRotate()(sample))
    assert isinstance(out["image"], tv_tensors.Image) and isinstance(out["mask"], tv_tensors.Mask)


@pytest.mark.parametrize(
    "transform",
    [GaussianNoise(0.1), SpectralJitter(0.1, 0.1), RandomBrightnessContrast(0.3, 0.3), RandomGamma((0.5, 0.7))],
)
def test_radiometric_transforms_change_images_but_never_masks(transform: object) -> None:
    torch.manual_seed(0)
    sample = image_sample()
    out = transform(sample)
    assert not torch.allclose(out["image"], sample["image"])
    assert out["image"].shape == sample["image"].shape
    assert out["mask"] is sample["mask"] and out["cloud"] is sample["cloud"]


def test_spectral_jitter_is_a_per_band_gain_and_offset() -> None:
    torch.manual_seed(0)
    image = image_sample()["image"]
    out = SpectralJitter(gain=0.1, offset=0.1)({"image": image})["image"]
    for band in range(4):  # each band is an exact linear function of itself
        gain = (out[band, 0, 1] - out[band, 0, 0]) / (image[band, 0, 1] - image[band, 0, 0])
        offset = out[band, 0, 0] - gain * image[band, 0, 0]
        torch.testing.assert_close(out[band], image[band] * gain + offset)
        assert abs(gain - 1) <= 0.1 + 1e-5 and abs(offset) <= 0.1 + 1e-5


def test_band_dropout_zeroes_exactly_the_chosen_bands() -> None:
    torch.manual_seed(0)
    image = torch.rand(13, 8, 8) + 1  # no zero anywhere
    counts = torch.zeros(13)
    for _ in range(200):
        out = BandDropout(p=0.3)({"image": image})["image"]
        zeroed = (out == 0).all(dim=(1, 2))
        kept = (out == image).all(dim=(1, 2))
        assert torch.equal(zeroed, ~kept) and kept.any()  # every band either intact or all zero
        counts += zeroed
    assert 0.2 < counts.mean() / 200 < 0.4  # about p of the bands
    assert (BandDropout(p=1.0)({"image": image})["image"] != 0).all(dim=(1, 2)).sum() == 1  # one survives


def test_modality_dropout_never_drops_every_modality() -> None:
    torch.manual_seed(0)
    sample = {"s2": torch.rand(12, 8, 8) + 1, "s1": torch.rand(2, 8, 8) + 1, "dem": torch.rand(1, 8, 8) + 1}
    dropped_counts = []
    for _ in range(200):
        out = ModalityDropout(p=0.9)(sample)
        dropped = [key for key in sample if (out[key] == 0).all()]
        assert len(dropped) < 3 and all((out[key] == sample[key]).all() for key in sample if key not in dropped)
        assert all(out[key].shape == sample[key].shape for key in sample)
        dropped_counts.append(len(dropped))
    assert max(dropped_counts) == 2 and min(dropped_counts) < 2


def test_cloud_simulation_brightens_optical_bands_and_marks_the_cloud_mask() -> None:
    torch.manual_seed(0)
    sample = {"s2": torch.zeros(12, 32, 32), "s1": torch.zeros(2, 32, 32), "cloud": torch.zeros(1, 32, 32)}
    out = CloudSimulation(p=1.0, brightness=3.0)(sample)
    assert out["s2"].max() > 1.5 and (out["s2"] >= 0).all()
    assert torch.equal(out["s1"], sample["s1"])  # radar sees through clouds
    covered = out["cloud"][0] == 1
    assert covered.any() and (out["s2"][:, covered] > 1.5).all() and (out["s2"][:, ~covered] <= 1.5 + 1e-6).all()
    assert torch.equal(CloudSimulation(p=0.0)(sample)["s2"], sample["s2"])


def test_temporal_dropout_keeps_a_minimum_and_updates_the_mask() -> None:
    torch.manual_seed(0)
    sample = series_sample(length=20, n_real=15)
    for _ in range(50):
        out = RandomTemporalDropout(p=0.9, min_keep=5)(sample)
        n_kept = int(out["mask"].sum())
        assert n_kept >= 5 and out["mask"][:n_kept].all() and not out["mask"][n_kept:].any()
        assert (out["x"][n_kept:] == 0).all() and (out["doy"][n_kept:] == 0).all()
        kept_days = out["doy"][:n_kept]
        assert (torch.diff(kept_days) > 0).all() and set(kept_days.tolist()) <= set(sample["doy"][:15].tolist())
        rows = [int(torch.nonzero(sample["doy"] == day)[0]) for day in kept_days]
        torch.testing.assert_close(out["x"][:n_kept], sample["x"][rows])  # spectra follow their dates
    assert int(RandomTemporalDropout(p=0.0)(sample)["mask"].sum()) == 15
    assert int(RandomTemporalDropout(p=0.5, min_keep=30)(sample)["mask"].sum()) == 15  # too short to drop


def test_temporal_shift_moves_real_days_only() -> None:
    torch.manual_seed(0)
    sample = series_sample()
    shifts = set()
    for _ in range(50):
        out = RandomTemporalShift(max_days=7)(sample)
        shift = out["doy"][:15] - sample["doy"][:15]
        assert (shift == shift[0]).all() and abs(int(shift[0])) <= 7 and (out["doy"][15:] == 0).all()
        shifts.add(int(shift[0]))
    assert len(shifts) > 5


def test_temporal_shift_keeps_a_multi_year_series_apart() -> None:
    torch.manual_seed(0)
    sample = series_sample()
    sample["doy"] = torch.where(sample["mask"], sample["doy"] + 365, sample["doy"])  # the second year
    for _ in range(20):
        out = RandomTemporalShift(max_days=7)(sample)
        shift = out["doy"][:15] - sample["doy"][:15]
        assert (shift == shift[0]).all(), "days past 366 were squashed into one"


def test_temporal_cloud_noise_replaces_real_observations_with_bright_flat_spectra() -> None:
    torch.manual_seed(0)
    sample = series_sample()
    out = TemporalCloudNoise(p=0.5, brightness=3.0, jitter=0.1)(sample)
    changed = (out["x"] != sample["x"]).any(dim=1)
    assert changed.any() and not changed[15:].any()
    assert (out["x"][changed] - 3.0).abs().max() < 1.0 and torch.equal(out["mask"], sample["mask"])


def test_pipelines_are_deterministic_under_a_seed_and_chain_with_v2_compose() -> None:
    pipeline = v2.Compose([RandomFlipRotate(), RandomCrop(8), GaussianNoise(0.1), BandDropout(0.3), CloudSimulation()])
    results = []
    for _ in range(2):
        torch.manual_seed(42)
        results.append(pipeline(image_sample()))
    for key in ("image", "mask", "cloud"):
        assert torch.equal(results[0][key], results[1][key])
    first = RandomTemporalDropout(generator=torch.Generator().manual_seed(3))(series_sample())
    second = RandomTemporalDropout(generator=torch.Generator().manual_seed(3))(series_sample())
    assert torch.equal(first["mask"], second["mask"]) and torch.equal(first["x"], second["x"])


def test_time_series_keys_are_refused_by_geometric_transforms() -> None:
    with pytest.raises(ValueError, match="geometric transforms need"):
        RandomFlipRotate()(series_sample())
